"""The pages' server side without a browser, on SQLite and PostgreSQL: sessions, CSRF, roles,
``/metrics`` and the queue figures."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import report_drafts as drafts
from dicom_listener.tables import IngestEvent, IngestEventKind
from raddraft import job_contract
from report_drafts import delivery
from report_drafts.tables import SentObject, User
from report_drafts.users import rotate_token
from tests.pages.seed import DEMO_CUT, PASSWORD, Seeded
from web import queue_status
from web.pages import viewmodel
from web.pages.routes import safe_next
from web.pages.sign_in import SESSION_COOKIE, Signer

SAMPLE = re.compile(
    r'^(raddraft_[a-z_]+)(\{[a-z_]+="(?:[^"\\]|\\.)*"(?:,[a-z_]+="(?:[^"\\]|\\.)*")*\})? '
    r"(-?[0-9.e+]+|\+Inf|NaN)$"
)


@pytest.fixture
def client(web_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(web_app) as test_client:
        yield test_client


def sign_in(client: TestClient, username: str) -> str:
    """Sign in through the form; returns the session's CSRF token from the next page."""
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    response = client.post(
        "/login",
        data={"csrf_token": token.group(1), "username": username, "password": PASSWORD},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get("/worklist")
    assert page.status_code == 200
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert csrf
    return csrf.group(1)


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    needle = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line[len(needle) :])
    raise AssertionError(f"no sample {needle!r} in metrics")


def test_metrics_text_format_and_counters(
    client: TestClient, seeded: Seeded, engine: Engine
) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    families: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = kind
        elif not line.startswith("# HELP "):
            assert SAMPLE.match(line), f"not exposition format: {line!r}"
    for name, kind in {
        "raddraft_ingest_events_total": "counter",
        "raddraft_ingest_bytes_total": "counter",
        "raddraft_queue_jobs": "gauge",
        "raddraft_task_duration_seconds": "histogram",
        "raddraft_export_failures_total": "counter",
        "raddraft_exports_dead_lettered": "gauge",
        "raddraft_reports": "gauge",
        "raddraft_workers_alive": "gauge",
        "raddraft_disk_used_ratio": "gauge",
    }.items():
        assert families.get(name) == kind, name
    assert metric(text, "raddraft_reports", state="drafted") == 3
    assert metric(text, "raddraft_reports", state="failed") == 1
    assert metric(text, "raddraft_exports_dead_lettered") == 1
    assert metric(text, "raddraft_queue_jobs", queue="io", state="dead") == 1
    assert (
        metric(text, "raddraft_task_duration_seconds_count", task=job_contract.DraftStudy.TASK) == 1
    )
    assert metric(text, "raddraft_workers_alive") == 2
    stored = metric(text, "raddraft_ingest_events_total", kind="stored")
    stored_bytes = metric(text, "raddraft_ingest_bytes_total")
    sr_failures = metric(text, "raddraft_export_failures_total", kind="sr")
    assert stored == 10 and sr_failures == 5

    # Events move the counters.
    with Session(engine) as session:
        session.add(IngestEvent(kind=IngestEventKind.stored, size_bytes=1234))
        session.add(IngestEvent(kind=IngestEventKind.refused))
        sent = session.query(SentObject).filter(SentObject.kind == "sr").first()
        assert sent is not None
        delivery.record_sent(session, sent.id, ok=False, error="timeout")
        session.commit()
    after = client.get("/metrics").text
    assert metric(after, "raddraft_ingest_events_total", kind="stored") == stored + 1
    assert metric(after, "raddraft_ingest_events_total", kind="refused") == 1
    assert metric(after, "raddraft_ingest_bytes_total") == stored_bytes + 1234
    assert metric(after, "raddraft_export_failures_total", kind="sr") == sr_failures + 1


def test_health(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ok"}


def test_cookie_session_needs_csrf_and_the_right_role(
    client: TestClient, seeded: Seeded, engine: Engine
) -> None:
    report = seeded.urgent_report
    # Pages need a session; the API without one answers 401.
    assert (
        client.get("/worklist", follow_redirects=False)
        .headers["location"]
        .startswith("/login?next=%2Fworklist")
    )
    assert client.post(f"/api/reports/{report}/sign", json={}).status_code == 401

    csrf = sign_in(client, "curie")
    # A filter that is not a number filters nothing ("²" is a digit to str.isdigit only).
    assert client.get("/worklist", params={"priority": "\u00b2"}).status_code == 200
    # An id past a 32-bit SQL INTEGER is malformed (422), not a query PostgreSQL refuses.
    assert client.get(f"/reports/{'9' * 14}").status_code == 422
    body = {"expected_version": 1, "impression": "Edited."}
    # The cookie alone does not authorise a change: no CSRF header, or a wrong one, is 401.
    assert client.post(f"/api/reports/{report}/edit", json=body).status_code == 401
    wrong = {"X-CSRF-Token": "0" * 32}
    assert client.post(f"/api/reports/{report}/edit", json=body, headers=wrong).status_code == 401
    ok = client.post(f"/api/reports/{report}/edit", json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    assert ok.json()["version"]["actor"] == "curie"
    # A report without a draft (drafting failed) opens read-only instead of failing.
    failed = client.get(f"/reports/{seeded.failed_report}")
    assert failed.status_code == 200
    assert 'id="sign-btn"' not in failed.text and "cannot be changed here" in failed.text
    assert client.get("/reports/999999").status_code == 404
    # A radiologist is no administrator.
    assert client.get("/queue").status_code == 403
    assert client.get("/queue/data.json").status_code == 403
    retry = client.post(
        f"/api/admin/jobs/{seeded.dead_export_job}/retry", headers={"X-CSRF-Token": csrf}
    )
    assert retry.status_code == 403

    # Sign out needs the token too; afterwards the cookie is gone.
    assert client.post("/logout", data={"csrf_token": "nope"}).status_code == 403
    out = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/worklist", follow_redirects=False).status_code == 303

    # A reader with a valid session and CSRF token is refused every change by the server.
    reader_csrf = sign_in(client, "reader")
    headers = {"X-CSRF-Token": reader_csrf}
    for path, payload in (
        (f"/api/reports/{report}/sign", {"expected_version": 2, "edit_reason": "none"}),
        (f"/api/reports/{report}/reject", {"expected_version": 2, "reason": "forged"}),
        (f"/api/reports/{report}/edit", {"expected_version": 2, "impression": "forged"}),
        (
            f"/api/reports/{report}/findings/{seeded.pneumothorax_uid}",
            {"expected_version": 2, "action": "reject"},
        ),
    ):
        assert client.post(path, json=payload, headers=headers).status_code == 403, path
    page = client.get(f"/reports/{report}")
    assert page.status_code == 200
    assert 'id="sign-btn"' not in page.text and "act-reject" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_login_form_is_csrf_protected_and_sessions_end(
    client: TestClient, seeded: Seeded, engine: Engine, web_app: FastAPI
) -> None:
    refused = client.post(
        "/login", data={"username": "curie", "password": PASSWORD}, follow_redirects=False
    )
    assert refused.status_code == 400
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token
    wrong = client.post(
        "/login",
        data={"csrf_token": token.group(1), "username": "curie", "password": "wrong"},
        follow_redirects=False,
    )
    assert wrong.status_code == 401
    nul = client.post(  # a name no user has and no database text holds: refused, not a 500
        "/login",
        data={"csrf_token": token.group(1), "username": "cu\x00rie", "password": "wrong"},
        follow_redirects=False,
    )
    assert nul.status_code == 401
    by_token = client.post(
        "/login",
        data={"csrf_token": token.group(1), "token": seeded.users["admin"].token},
        follow_redirects=False,
    )
    assert by_token.status_code == 303 and by_token.headers["location"] == "/queue"
    assert client.get("/queue/data.json").json()["dead_jobs"][0]["id"] == seeded.dead_export_job

    # A tampered cookie is no session.
    cookie = client.cookies.get(SESSION_COOKIE)
    assert cookie
    body, mac = cookie.rsplit(".", 1)
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, body + "x." + mac)
    assert client.get("/queue", follow_redirects=False).status_code == 303
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie)
    assert client.get("/queue").status_code == 200
    # Rotating the user's token ends the sessions made before.
    with Session(engine) as session:
        user = session.query(User).filter(User.name == "admin").one()
        rotate_token(session, user)
        session.commit()
    assert client.get("/queue", follow_redirects=False).status_code == 303


def test_signer_expiry_and_safe_next() -> None:
    signer = Signer(b"k" * 32, max_age=60)
    user = User(id=7, name="x", role="reader", token_hash="t", password_hash=None)
    cookie = signer.issue(user, now=1000)
    assert signer.read(cookie, now=1030) is not None
    assert signer.read(cookie, now=1061) is None
    assert Signer(b"other" * 8).read(cookie, now=1030) is None
    assert safe_next("//evil.example/") == "/"
    assert safe_next("https://evil.example/") == "/"
    assert safe_next("/reports/3?x=1") == "/reports/3?x=1"


def test_stage_groups_and_percentiles() -> None:
    flat = [
        {"stage": 2, "question": "Is there effusion?", "answer": "Yes", "seconds": 1.0},
        {"stage": 1, "question": "View?", "answer": "PA", "seconds": 0.5},
        {"stage": 2, "question": "Is there edema?", "answer": "No", "seconds": 2.0},
    ]
    groups = viewmodel.stage_groups(flat)
    assert [g.number for g in groups] == [1, 2]
    assert len(groups[1].turns) == 2 and groups[1].seconds == 3.0
    assert queue_status.percentile([], 0.5) is None
    assert queue_status.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert queue_status.percentile([float(v) for v in range(1, 101)], 0.95) == pytest.approx(95.05)


def test_review_page_flags_cut_answers_and_shows_the_report_prompts(
    client: TestClient, seeded: Seeded
) -> None:
    """A draft whose answers were cut by the token limit says so on the page, and the
    single-turn report prompts show as their own group beside the eight stages."""
    sign_in(client, "curie")
    page = client.get(f"/reports/{seeded.demo_report}").text
    assert 'data-testid="truncated-warning"' in page and DEMO_CUT in page
    assert "Report texts: report texts, single-turn as CheXOne was trained" in page
    assert "cut at the token limit, incomplete</strong> Patchy opacity" in page
    plain = client.get(f"/reports/{seeded.routine_report}").text
    assert "truncated-warning" not in plain and "cut at the token limit" not in plain


def test_review_page_says_the_trace_is_still_being_read_until_it_arrives(
    client: TestClient, seeded: Seeded, engine: Engine
) -> None:
    """Issue 19: the draft is stored before the rest of the trace. Its page says so, then shows
    the stages and both times when the trace arrives; a failed trace says why, the draft stays."""
    with Session(engine) as session, session.begin():
        report = drafts.get_report(session, seeded.routine_report)
        run = drafts.draft_run(session, report)
        assert run is not None
        run_pk, stages = run.id, list(run.stages)
        run.stages = stages[:3]
        run.timings = {"draft_s": 1.5, "stored_draft_s": 2.0, "trace": drafts.TRACE_PENDING}
    sign_in(client, "curie")
    pending = client.get(f"/reports/{seeded.routine_report}").text
    assert 'id="trace-pending"' in pending and "Trace still being read" in pending
    assert "Draft stored after 2.0 s." in pending

    with Session(engine) as session, session.begin():
        drafts.record_trace(session, run_pk, stages=stages, timings={"stored_trace_s": 9.25})
    done = client.get(f"/reports/{seeded.routine_report}").text
    assert "trace-pending" not in done and "Trace incomplete" not in done
    assert "Draft stored after 2.0 s, trace after 9.2 s." in done
    api = client.get(f"/api/reports/{seeded.routine_report}").json()["provenance"]
    assert api["timings"]["trace"] == "complete" and len(api["stages"]) == len(stages)

    with Session(engine) as session, session.begin():
        run = session.get(drafts.DraftRun, run_pk)
        assert run is not None
        run.timings = {**run.timings, "trace": drafts.TRACE_PENDING}
        drafts.mark_trace_incomplete(session, run_pk, "RuntimeError: model server failed")
    failed = client.get(f"/reports/{seeded.routine_report}").text
    assert "Trace incomplete (the draft is complete): RuntimeError: model server failed" in failed
    assert "trace-pending" not in failed

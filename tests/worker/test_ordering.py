"""What leaves for one report reaches each destination in version order, and newest wins.

The reorder is forced, not hoped for: the RIS (the real MLLP listener) is down while the
preliminary waits for its retry, the radiologist signs, then the RIS comes back and the jobs run
in the worst order. The FHIR stand-in versions resources like a real server (ETag, If-Match,
412). On SQLite and PostgreSQL, through the job runner the workers use.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hl7apy.parser import parse_message
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

import peers
from peers.mllp import control_id_of
from raddraft import jobs
from raddraft.db import session_scope
from raddraft.destinations import MllpTarget
from raddraft.job_contract import ExportDicom, JobArgs, PushFhir, SendHl7
from raddraft.settings import Settings
from report_drafts import claim_sends, record_sent, signoff, trace
from report_drafts.tables import OutboxPayload, ReportVersion, Role, SentObject
from report_drafts.users import add_user
from tests.conftest import free_port, reload_settings
from tests.drafts.helpers import make_draft
from tests.fhir_server import FhirServer
from tests.mllp_listener import Listener, serving
from web import queue_status
from worker import exporter
from worker.runner import run_job

HANDLERS: dict[type[Any], Any] = {
    ExportDicom: exporter.export_dicom_job,
    SendHl7: exporter.send_hl7_job,
    PushFhir: exporter.push_fhir_job,
}
BY_TASK = {kind.TASK: kind for kind in HANDLERS}


@pytest.fixture
def fhir() -> Iterator[FhirServer]:
    server = FhirServer()
    yield server
    server.close()


def _wire(monkeypatch: pytest.MonkeyPatch, ris_port: int, fhir_url: str, **env: str) -> Settings:
    monkeypatch.setenv("RADDRAFT_RIS_MLLP", f"127.0.0.1:{ris_port}")
    monkeypatch.setenv("RADDRAFT_FHIR_SERVER_URL", fhir_url)
    monkeypatch.setenv("RADDRAFT_JOB_BACKOFF_SECONDS", "0")
    for name, value in env.items():
        monkeypatch.setenv(f"RADDRAFT_{name.upper()}", value)
    return reload_settings()


def _jobs(engine: Engine, version_pk: int) -> dict[str, jobs.Job]:
    """The version's export jobs by task."""
    with session_scope(engine) as session:
        found = {
            job.task: job
            for job in session.scalars(select(jobs.Job))
            if job.args.get("report_version_pk") == version_pk and job.task in BY_TASK
        }
        session.expunge_all()
        return found


def _run(job: jobs.Job) -> str:
    kind: type[JobArgs] = BY_TASK[job.task]
    return run_job(job.id, kind, HANDLERS[kind])


def _version_pk(engine: Engine, report_id: int, number: int) -> int:
    with session_scope(engine) as session:
        return int(
            session.scalars(
                select(ReportVersion.id).where(
                    ReportVersion.report_pk == report_id, ReportVersion.number == number
                )
            ).one()
        )


def _rows(engine: Engine, version_pk: int, kind: str) -> list[SentObject]:
    with session_scope(engine) as session:
        rows = list(
            session.scalars(
                select(SentObject)
                .where(SentObject.report_version_pk == version_pk, SentObject.kind == kind)
                .order_by(SentObject.id)
            )
        )
        session.expunge_all()
        return rows


def _sign(engine: Engine, report_id: int, settings: Settings) -> int:
    """Sign as a radiologist; the signed version's pk."""
    with session_scope(engine) as session:
        user, _ = add_user(session, "rad", Role.radiologist, display_name="House^Gregory")
        signoff.open_report(session, report_id, user)
        current = signoff.get_report(session, report_id).current_version
        row = signoff.sign(
            session,
            report_id,
            user,
            expected_version=current,
            edit_reason="none",
            settings=settings,
        )
        return row.id


def _status(message: str) -> tuple[str, list[str]]:
    """OBR-25 and every OBX-11 of an ORU, read with hl7apy."""
    parsed = parse_message(message.replace("\n", "\r"), find_groups=False)
    obx = parsed.children.get("OBX") or parsed.obx
    return str(parsed.obr.obr_25.value), [str(o.obx_11.value) for o in obx]


@pytest.mark.parametrize("order", ["old job first", "new job first"])
def test_a_preliminary_waiting_for_a_retry_never_follows_the_final(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    fhir: FhirServer,
    order: str,
) -> None:
    ris, ris_port = Listener(), free_port()  # the RIS is down: nothing listens there yet
    wired = _wire(
        monkeypatch, ris_port, fhir.url, release_unsigned_hl7="send", release_unsigned_fhir="send"
    )
    report_id, _study = make_draft(engine, wired)
    draft_pk = _version_pk(engine, report_id, 1)
    draft_jobs = _jobs(engine, draft_pk)
    assert _run(draft_jobs[SendHl7.TASK]) == "retry"  # the preliminary waits for its retry
    assert _run(draft_jobs[PushFhir.TASK]) == "done"
    (p_row,) = _rows(engine, draft_pk, "hl7")
    assert (p_row.state, p_row.response["ack_code"]) == ("failed", None)

    signed_pk = _sign(engine, report_id, wired)
    signed_jobs = _jobs(engine, signed_pk)
    with serving(ris, ris_port):  # the RIS is back
        runs = [draft_jobs[SendHl7.TASK], signed_jobs[SendHl7.TASK]]
        if order == "new job first":
            runs.reverse()
        assert [_run(job) for job in runs] == ["done", "done"]
        assert _run(signed_jobs[PushFhir.TASK]) == "done"

    assert [_status(m)[0] for m in ris.received] == ["F"]
    (p_row,) = _rows(engine, draft_pk, "hl7")
    (f_row,) = _rows(engine, signed_pk, "hl7")
    assert (p_row.state, p_row.replaced_by_version) == ("obsolete", 2)
    assert (f_row.state, f_row.response["ack_code"]) == ("sent", "AA")
    assert f_row.response["ack_for"] == f_row.identifier == control_id_of(ris.received[0])

    # FHIR: the final updated the preliminary it replaced, naming its version; history kept.
    path = _report_path(fhir)
    assert [v["status"] for v in fhir.history[path]] == ["preliminary", "final"]
    pushes = [(p, m) for (p, _, _), m in zip(fhir.puts, fhir.if_match, strict=True) if p == path]
    assert [m for _, m in pushes] == [None, FhirServer.etag(1)]
    (dr_row,) = [r for r in _rows(engine, signed_pk, "fhir") if "DiagnosticReport" in r.identifier]
    assert dr_row.response["etag"] == FhirServer.etag(2)

    # Both attempts and the obsolescence are in the audit log, found from the control id.
    with session_scope(engine) as session:
        (found,) = trace(session, f_row.identifier)
        assert found.version == 2
        sends = [a for a in found.attempts if a["kind"] == "hl7"]
        assert [(a["ok"], a["response"].get("ack_code")) for a in sends] == [(True, "AA")]
        (old,) = trace(session, p_row.identifier)
        hl7 = [a for a in old.attempts if a["kind"] == "hl7"]
        assert [a["action"] for a in hl7] == ["message", "obsolete"]
        assert hl7[0]["ok"] is False


def _report_path(fhir: FhirServer) -> str:
    (path,) = [p for p in fhir.history if p.startswith("/fhir/DiagnosticReport/")]
    return path


def test_the_final_waits_while_the_preliminary_is_being_sent(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
    fhir: FhirServer,
) -> None:
    ris, ris_port = listener
    wired = _wire(monkeypatch, ris_port, fhir.url, release_unsigned_hl7="send")
    report_id, _study = make_draft(engine, wired)
    draft_pk = _version_pk(engine, report_id, 1)
    with session_scope(engine) as session:  # a worker has claimed the preliminary: in flight
        claim = claim_sends(session, wired, draft_pk, kinds=("hl7",), destination=None)
        assert len(claim.items) == 1
    signed_pk = _sign(engine, report_id, wired)
    final_job = _jobs(engine, signed_pk)[SendHl7.TASK]

    assert _run(final_job) == "waiting"  # not sent, no attempt spent
    with session_scope(engine) as session:
        job = session.get(jobs.Job, final_job.id)
        assert job is not None
        assert (job.state, job.attempts) == ("pending", 0)
        assert "earlier version" in (job.last_error or "")
    assert ris.received == []

    # The preliminary's worker finishes its send; now the final goes, after it.
    (item,) = claim.items
    delivery = peers.sender_for(MllpTarget.parse(wired.ris_mllp), wired).send(
        [peers.Outbound(item.identifier, item.path)]
    )
    with session_scope(engine) as session:
        record_sent(
            session, item.sent_object_pk, ok=True, response=delivery.responses[item.identifier]
        )
    assert _run(final_job) == "done"
    assert [_status(m)[0] for m in ris.received] == ["P", "F"]


def test_a_fhir_version_conflict_is_dead_lettered_never_overwritten(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
    fhir: FhirServer,
) -> None:
    _ris, ris_port = listener
    wired = _wire(monkeypatch, ris_port, fhir.url, release_unsigned_fhir="send")
    report_id, _study = make_draft(engine, wired)
    assert _run(_jobs(engine, _version_pk(engine, report_id, 1))[PushFhir.TASK]) == "done"
    path = _report_path(fhir)
    fhir.change_behind_our_back(path, conclusion="edited in the EHR")
    signed_pk = _sign(engine, report_id, wired)

    assert _run(_jobs(engine, signed_pk)[PushFhir.TASK]) == "dead"
    assert fhir.current(path)["conclusion"] == "edited in the EHR"  # not overwritten
    assert [v["status"] for v in fhir.history[path]] == ["preliminary", "preliminary"]
    (dr_row,) = [r for r in _rows(engine, signed_pk, "fhir") if "DiagnosticReport" in r.identifier]
    assert dr_row.state == "failed" and dr_row.response["http_status"] == 412
    assert dr_row.response["if_match"] == FhirServer.etag(1)
    with session_scope(engine) as session:
        figures = queue_status.queue_figures(session, wired)
    (dead,) = [j for j in figures["dead_jobs"] if j["task"] == PushFhir.TASK]
    assert "version conflict" in dead["last_error"] and "resolve by hand" in dead["last_error"]
    assert any("version conflict" in (s["last_error"] or "") for s in figures["failed_sends"])


def test_a_lost_answer_is_recognised_on_retry(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
    fhir: FhirServer,
) -> None:
    """The server took the final but its answer was lost: the retry's If-Match names the old
    version (412), and the server's current resource is ours: delivered, not a conflict."""
    _ris, ris_port = listener
    wired = _wire(monkeypatch, ris_port, fhir.url, release_unsigned_fhir="send")
    report_id, _study = make_draft(engine, wired)
    assert _run(_jobs(engine, _version_pk(engine, report_id, 1))[PushFhir.TASK]) == "done"
    signed_pk = _sign(engine, report_id, wired)
    job = _jobs(engine, signed_pk)[PushFhir.TASK]
    assert _run(job) == "done"
    with session_scope(engine) as session:  # as if the answers never came back
        for row in session.scalars(
            select(SentObject).where(SentObject.report_version_pk == signed_pk)
        ):
            row.state = "failed"
        stored = session.get(jobs.Job, job.id)
        assert stored is not None
        stored.state = "pending"
    assert _run(job) == "done"
    path = _report_path(fhir)
    assert [v["status"] for v in fhir.history[path]] == ["preliminary", "final"]
    (dr_row,) = [r for r in _rows(engine, signed_pk, "fhir") if "DiagnosticReport" in r.identifier]
    assert dr_row.response["http_status"] == 412 and dr_row.response["already_current"] is True


def test_an_unexpected_failure_leaves_nothing_in_flight(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
    fhir: FhirServer,
) -> None:
    """A payload that cannot be read fails its rows (no row stays ``sending``), so the next
    version is not kept waiting behind it."""
    ris, ris_port = listener
    wired = _wire(monkeypatch, ris_port, fhir.url, release_unsigned_hl7="send")
    report_id, _study = make_draft(engine, wired)
    draft_pk = _version_pk(engine, report_id, 1)
    (p_row,) = _rows(engine, draft_pk, "hl7")
    (wired.data_dir / "outbox" / p_row.path).unlink()
    with session_scope(engine) as session:  # gone from the database too: nowhere to read it
        session.execute(delete(OutboxPayload).where(OutboxPayload.path == p_row.path))
    assert _run(_jobs(engine, draft_pk)[SendHl7.TASK]) == "retry"
    (p_row,) = _rows(engine, draft_pk, "hl7")
    assert p_row.state == "failed" and "FileNotFoundError" in (p_row.last_error or "")
    signed_pk = _sign(engine, report_id, wired)
    assert _run(_jobs(engine, signed_pk)[SendHl7.TASK]) == "done"
    assert [_status(m)[0] for m in ris.received] == ["F"]


def test_a_dead_job_left_sending_does_not_hold_up_the_final(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
    fhir: FhirServer,
) -> None:
    ris, ris_port = listener
    wired = _wire(monkeypatch, ris_port, fhir.url, release_unsigned_hl7="send")
    report_id, _study = make_draft(engine, wired)
    draft_pk = _version_pk(engine, report_id, 1)
    with session_scope(engine) as session:  # claimed, then its job was dead-lettered
        assert len(claim_sends(session, wired, draft_pk, kinds=("hl7",), destination=None).items)
        dead = session.get(jobs.Job, _jobs(engine, draft_pk)[SendHl7.TASK].id)
        assert dead is not None
        dead.state = jobs.JobState.dead
    signed_pk = _sign(engine, report_id, wired)
    assert _run(_jobs(engine, signed_pk)[SendHl7.TASK]) == "done"
    assert [_status(m)[0] for m in ris.received] == ["F"]
    (p_row,) = _rows(engine, draft_pk, "hl7")
    assert (p_row.state, p_row.replaced_by_version) == ("obsolete", 2)

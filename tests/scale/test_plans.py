"""The hot reads stay on their indexes and every list stays within its page (issue #23).

A PostgreSQL archive of about 8,000 studies, a day apart in groups of ten (made by RadDraft's
own code, then cloned: :mod:`tests.scale_seed`), analysed. Every statement the worklist (each
filter, a cursor page), the queue page, ``/metrics``, the router's pass, ``raddraft studies``,
the retention check of one study, ``raddraft trace`` by accession number, and the QIDO-RS and
FHIR searches (archive-wide pages and narrow ones) run is captured and explained: no
sequential scan of a big table. Then the list endpoints answer at most their
page: the worklist by keyset without repeating a row, the queue page's lists, the admin jobs
list, ``raddraft studies``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import report_drafts as drafts
from dicom_listener.tables import Patient, Study
from raddraft.cli import main
from raddraft.commands.studies import studies_page_query
from raddraft.db import session_factory, utcnow
from raddraft.settings import Settings
from report_drafts import Report
from tests import scale_seed
from tests.conftest import reload_settings
from web import create_web_app, metrics, queue_status
from web.api import fhir_routes, views
from web.dicomweb import catalog
from worker import router

BIG = frozenset(
    (
        "reports",
        "report_versions",
        "jobs",
        "sent_objects",
        "audit_events",
        "ingest_events",
        "studies",
        "study_versions",
        "series",
        "instances",
        "patients",
        "draft_runs",
        "finding_feedback",
        "critical_notifications",
    )
)
STUDIES = 8000


@pytest.fixture
def archive(
    postgres_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Engine, Settings, scale_seed.page_seed.Seeded]]:
    from raddraft import migrate
    from raddraft.db import engine_for

    migrate.upgrade(postgres_url)
    data = tmp_path / "data"
    data.mkdir()
    for key, value in {
        "RADDRAFT_DATA_DIR": str(data),
        "RADDRAFT_DATABASE_URL": postgres_url,
        "RADDRAFT_DESTINATIONS": "PACS@127.0.0.1:1",
        "RADDRAFT_RIS_MLLP": "127.0.0.1:2",
        "RADDRAFT_CRITICAL_MLLP": "127.0.0.1:4",
        "RADDRAFT_WEB_SECRET": "test-secret-not-for-production",
        "RADDRAFT_RETENTION_DAYS": "30",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RADDRAFT_BROKER_URL", raising=False)
    settings = reload_settings()
    engine = engine_for(postgres_url)
    _archive, seeded = scale_seed.build(engine, settings, studies=STUDIES, template=10, span_days=1)
    yield engine, settings, seeded
    reload_settings()


class Statements:
    """The SELECTs run on ``engine`` while it is active."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.found: list[tuple[str, Any]] = []

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        head = statement.lstrip().split(None, 1)[0].upper()
        if head in ("SELECT", "WITH") and not isinstance(params, list):
            self.found.append((statement, params))


#: Nodes that pass rows on as they come: a scan below a Limit through these stops early.
STREAMING = frozenset(("Limit", "Subquery Scan", "Result", "Seq Scan"))


def seq_scans(plan: dict[str, Any], *, limited: bool = False) -> list[str]:
    """Big tables a plan reads from end to end (a scan a Limit stops early is bounded)."""
    kind = plan.get("Node Type")
    limited = kind == "Limit" or (limited and kind in STREAMING)
    found = []
    if kind == "Seq Scan" and plan.get("Relation Name") in BIG and not limited:
        found.append(str(plan["Relation Name"]))
    for child in plan.get("Plans", []):
        found += seq_scans(child, limited=limited)
    return found


class Broker:
    class conf:
        broker_url = "memory://"

    def send_task(self, *_args: Any, **_kwargs: Any) -> None:
        pass


def hot_paths(engine: Engine, settings: Settings) -> None:
    with session_factory(engine)() as session:
        study_pk, accession, patient_id = session.execute(
            select(Study.id, Study.accession_number, Patient.patient_id)
            .join(Patient, Patient.id == Study.patient_pk)
            .order_by(Study.id.desc())
            .limit(1)
        ).one()
        first = views.worklist(session, page_size=50)
        views.worklist(session, page_size=50, cursor=first["next_cursor"])
        views.worklist(session, page_size=50, states=["drafted", "in_review"])
        views.worklist(session, page_size=50, accession=accession)
        views.worklist(session, page_size=50, patient_id=patient_id)
        views.worklist(session, page_size=50, priority=0)
        queue_status.queue_figures(session, settings)
        metrics.collect(session, settings)
        session.execute(
            studies_page_query(
                limit=50,
                before=None,
                patient_id=None,
                accession=None,
                report_state=None,
                since=None,
            )
        ).all()
        drafts.still_purgeable(session, settings, study_pk)
        signed = session.scalar(
            select(Study.accession_number)
            .join(Report, Report.study_pk == Study.id)
            .where(Report.state == "signed")
            .order_by(Study.id.desc())
            .limit(1)
        )
        assert drafts.trace(session, str(signed))
        session.rollback()
        archive_searches(session, settings, patient_id)
        session.rollback()
    router.route_once(Broker(), settings, engine)  # type: ignore[arg-type]


def archive_searches(session: Session, settings: Settings, patient_id: str) -> None:
    """Issue 23's archive-wide searches (QIDO-RS and FHIR), each a page, and narrow ones."""
    for level, query_params, hits in (
        ("study", [("limit", "50")], True),
        ("study", [("limit", "50"), ("offset", "50")], True),
        ("study", [("PatientName", "A*")], False),
        ("study", [("PatientName", "SCALE*"), ("limit", "50")], True),
        ("study", [("ModalitiesInStudy", "DX"), ("limit", "50")], True),
        ("study", [("PatientID", patient_id)], True),
        ("series", [("Modality", "DX")], True),
        ("instance", [("limit", "50")], True),
    ):
        query = catalog.parse_query(query_params, level)
        limit, _ = catalog.page_size(query, settings)
        found = catalog.search(session, settings, level, query, limit)
        assert bool(found.hits) == hits, (level, query_params)
    recent = (utcnow() - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    reports, studies = fhir_routes._search_reports, fhir_routes._search_studies
    for found, search in (
        (reports, {"status": ["final"]}),
        (reports, {"status": ["preliminary"]}),
        (reports, {}),
        (reports, {"patient": [patient_id]}),
        (reports, {"_lastUpdated": [f"ge{recent}"]}),
        (reports, {"status": ["final"], "_lastUpdated": [f"ge{recent}"]}),
        (studies, {}),
        (studies, {"patient": [patient_id]}),
    ):
        first = fhir_routes.Page(offset=0, after=None)
        entries, total = found(session, search, 50, first)
        assert len(entries) <= 50 and total >= len(entries), search
        # The next page as its link asks for it: past the first page's last row, by key; and
        # the previous page of that one: the rows before its first, by key in reverse.
        second = fhir_routes.Page(offset=50, after=first.next_after or 0)
        found(session, search, 50, second)
        found(session, search, 50, fhir_routes.Page(0, None, before=second.previous_before or 0))


def test_hot_reads_use_indexes_and_lists_keep_to_their_page(
    archive: tuple[Engine, Settings, scale_seed.page_seed.Seeded],
) -> None:
    engine, settings, seeded = archive
    with Statements(engine) as seen:
        hot_paths(engine, settings)
    assert len(seen.found) > 30
    scans = {}
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, params in seen.found:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, params)
            plan = cursor.fetchone()[0][0]["Plan"]
            if found := seq_scans(plan):
                scans[statement[:300]] = found
    finally:
        raw.close()
    assert scans == {}, json.dumps(scans, indent=1)

    token = seeded.users["radiologist"].token
    with TestClient(create_web_app(settings)) as client:
        api = {"Authorization": f"Bearer {token}"}
        seen_ids: list[int] = []
        cursor_at: str | None = None
        keys = []
        for _ in range(3):
            params: dict[str, Any] = {"page_size": 40}
            if cursor_at:
                params["cursor"] = cursor_at
            page = client.get("/api/worklist", params=params, headers=api).json()
            assert len(page["items"]) == 40 and page["total"] == views.COUNT_LIMIT
            assert page["total_capped"] is True
            seen_ids += [item["id"] for item in page["items"]]
            keys += [(item["priority"], item["created_at"]) for item in page["items"]]
            cursor_at = page["next_cursor"]
        assert len(set(seen_ids)) == 120 and keys == sorted(keys)
        bad = client.get("/api/worklist", params={"cursor": "bm90IGEgY3Vyc29y"}, headers=api)
        assert bad.status_code == 422  # report_drafts.InvalidRequest

        form = client.get("/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert csrf
        admin = seeded.users["admin"].token
        signed_in = client.post(
            "/login", data={"csrf_token": csrf[1], "token": admin}, follow_redirects=False
        )
        assert signed_in.status_code == 303
        figures = client.get("/queue/data.json").json()
        for name in ("dead_jobs", "failed_sends", "failed_reports", "open_versions"):
            assert len(figures[name]) <= queue_status.LIST_LIMIT, name
        assert len(figures["workers"]) <= queue_status.WORKER_LIMIT
        jobs_page = client.get(
            "/api/admin/jobs", params={"limit": 25}, headers={"Authorization": f"Bearer {admin}"}
        )
        assert len(jobs_page.json()) == 25
        page = client.get("/worklist")
        assert page.status_code == 200 and page.text.count('class="row-link"') <= 25
        assert "Next" in page.text

    listing = CliRunner().invoke(main, ["studies", "--limit", "7", "--json"])
    assert listing.exit_code == 0, listing.output
    rows = json.loads(listing.stdout)
    assert len(rows) == 7 and all(r["accession_number"] and "report_state" in r for r in rows)
    more = CliRunner().invoke(
        main, ["studies", "--limit", "7", "--json", "--before", rows[-1]["cursor"]]
    )
    later = json.loads(more.stdout)
    assert len(later) == 7 and not {r["cursor"] for r in later} & {r["cursor"] for r in rows}

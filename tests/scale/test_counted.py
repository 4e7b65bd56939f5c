"""Counts kept as rows change (issue #23) stay true, and ``/metrics`` shows every one moving.

On SQLite and PostgreSQL: a real listener association (C-ECHO, C-STORE), drafts, a failed draft,
a dead export and failed sends (the pages' seed), a signature without an edit and a finished
job move every family ``/metrics`` names, ``association_accepted`` and ``echo`` included
(issue #22); the kept counts then equal a recount of the rows. Worker heartbeats: a worker that
was replaced or stayed silent for long leaves the queue page's list (issue #22).
"""

from __future__ import annotations

import datetime as dt
import importlib
import re

import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from dicom_listener.scp import Listener
from raddraft import counters, jobs
from raddraft.db import session_factory, session_scope, utcnow
from raddraft.settings import Settings
from report_drafts import signoff
from report_drafts.tables import Report, ReportState, User
from tests.conftest import free_port, reload_settings
from tests.dicom_factory import make_cxr
from tests.pages.seed import seed
from web import create_web_app, queue_status

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?P<labels>\{.*\})? (?P<value>\S+)$")
MIGRATION = importlib.import_module("migrations.versions.0011_counters_and_indexes")


@pytest.fixture
def scale_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RADDRAFT_DESTINATIONS", "PACS@127.0.0.1:1")
    monkeypatch.setenv("RADDRAFT_WEB_SECRET", "test-secret-not-for-production")
    monkeypatch.setenv("RADDRAFT_ALLOWED_CALLERS", "*")
    return reload_settings()


def samples(body: str) -> dict[str, float]:
    found = {}
    for line in body.splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, line
        found[match["name"] + (match["labels"] or "")] = float(match["value"])
    return found


def families(body: str) -> set[str]:
    return {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}


def family_of(sample: str, names: set[str]) -> str:
    bare = sample.split("{", 1)[0]
    for suffix in ("_bucket", "_sum", "_count", ""):
        if suffix and bare.endswith(suffix) and bare[: -len(suffix)] in names:
            return bare[: -len(suffix)]
    return bare


def scrape(settings: Settings) -> str:
    with TestClient(create_web_app(settings)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    return response.text


def associate(settings: Settings, tmp: object) -> None:
    """One association to the real listener: a C-ECHO and a C-STORE."""
    listener = Listener(settings).start(port=free_port(), host="127.0.0.1")
    try:
        dataset = make_cxr(f"{tmp}/one.dcm", view="PA")
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(Verification)
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title=settings.ae_title)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(dataset).Status == 0
        assoc.release()
    finally:
        listener.stop()


def sign_without_edit(engine: Engine, settings: Settings, report_pk: int) -> None:
    with session_scope(engine) as session:
        doctor = session.scalars(select(User).where(User.name == "curie")).one()
        report = signoff.open_report(session, report_pk, doctor)
        signoff.sign(
            session,
            report_pk,
            doctor,
            expected_version=report.current_version,
            edit_reason="none",
            settings=settings,
        )


def recount(engine: Engine) -> dict[counters.Key, float]:
    """Every count from the rows, as migration 0011 builds them."""
    with engine.connect() as conn:
        transaction = conn.begin()
        MIGRATION.rebuild_counters(conn)
        rows = conn.execute(text("SELECT name, labels, value FROM counters")).all()
        transaction.rollback()
    return {(n, labels): float(v) for n, labels, v in rows if v}


def test_every_metric_is_moved_by_an_action_and_the_kept_counts_equal_a_recount(
    scale_settings: Settings, engine: Engine, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = scrape(scale_settings)
    associate(scale_settings, tmp_path)
    seeded = seed(scale_settings, engine)
    sign_without_edit(engine, scale_settings, seeded.routine_report)
    (scale_settings.data_dir / "ballast").write_bytes(b"\0" * (8 << 20))
    after = scrape(scale_settings)
    monkeypatch.setenv("RADDRAFT_DISK_WATERMARK_PERCENT", "80")
    watermark = samples(scrape(reload_settings()))

    old, new = samples(before), samples(after)
    new["raddraft_disk_watermark_ratio"] = watermark["raddraft_disk_watermark_ratio"]
    names = families(after)
    moved = {family_of(key, names) for key, value in new.items() if old.get(key) != value}
    assert names - moved == set(), f"named at /metrics but moved by nothing: {names - moved}"
    accepted = 'raddraft_ingest_events_total{kind="association_accepted"}'
    assert old[accepted] == 0 and new[accepted] == 1
    echo = 'raddraft_ingest_events_total{kind="echo"}'
    assert old[echo] == 0 and new[echo] == 1  # the one C-ECHO sent in associate()
    assert new['raddraft_report_versions_total{action="sign"}'] == 1
    assert new["raddraft_signed_without_edit_total"] == 1

    with session_factory(engine)() as session:
        queue_status.counted(session, ())  # folds what is left
        kept = counters.read(session, MIGRATION_NAMES)
    assert {k: v for k, v in kept.items() if v} == recount(engine)


MIGRATION_NAMES = (
    "reports",
    "jobs",
    "job_duration",
    "job_duration_sum",
    "sent_objects",
    "sent_attempts",
    "ingest_events",
    "ingest_bytes",
    "report_versions",
    "signed_without_edit",
)


def test_counts_follow_updates_deletes_and_rollbacks(
    scale_settings: Settings, engine: Engine
) -> None:
    seeded = seed(scale_settings, engine)
    with session_scope(engine) as session:  # a change that never commits counts nothing
        session.get_one(Report, seeded.demo_report).state = ReportState.superseded
        session.flush()
        session.rollback()
    with session_scope(engine) as session:
        job = jobs.Job(key="x", task="t", queue="io", state=jobs.JobState.pending)
        session.add(job)
        session.flush()
        job.state = jobs.JobState.done
        job.started_at = utcnow() - dt.timedelta(seconds=3)
        job.finished_at = utcnow()
        session.flush()
        session.delete(job)
    with session_factory(engine)() as session:
        counters.fold(session, batch=3)  # a partial fold leaves totals exact
        session.commit()
        kept = counters.read(session, MIGRATION_NAMES)
    # The deleted job's run stays counted (a counter); a recount of the rows cannot see it.
    run = {("job_duration", "t|5"), ("job_duration_sum", "t")}
    assert {k: v for k, v in kept.items() if v and k not in run} == recount(engine)
    assert kept.get(("jobs", "io|done|t"), 0) == 0
    assert kept[("job_duration", "t|5")] == 1  # a run is counted once, kept when deleted
    assert kept.get(("reports", "superseded"), 0) == 0


def beat(engine: Engine, name: str, queues: str, *, started: float, seen: float) -> None:
    now = utcnow()
    with session_scope(engine) as session:
        session.add(
            jobs.WorkerBeat(
                name=name,
                queues=queues,
                started_at=now - dt.timedelta(seconds=started),
                last_seen=now - dt.timedelta(seconds=seen),
            )
        )


def test_gone_workers_leave_the_live_list(scale_settings: Settings, engine: Engine) -> None:
    lease = scale_settings.job_lease_seconds
    beat(engine, "gpu@old", "gpu", started=3600, seen=3 * lease)  # replaced by gpu@new
    beat(engine, "gpu@new", "gpu", started=2 * lease, seen=1)
    beat(engine, "io@stuck", "io", started=3600, seen=2 * lease)  # silent, nobody took over
    beat(engine, "io@ancient", "io", started=90000, seen=11 * lease)  # silent for too long

    def listed() -> dict[str, bool]:
        with session_factory(engine)() as session:
            found = queue_status.workers(session, scale_settings, utcnow())
        return {w["name"]: w["alive"] for w in found}

    assert listed() == {"gpu@new": True, "io@stuck": False}
    with TestClient(create_web_app(scale_settings)) as client:
        body = client.get("/metrics").text
    assert "gpu@old" not in body and "io@ancient" not in body
    assert samples(body)["raddraft_workers_alive"] == 1

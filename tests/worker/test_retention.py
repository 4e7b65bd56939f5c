"""Retention: what may leave the archive, what never does, and the record of it.

Seven studies, each in one situation the policy must judge; the dry run (``raddraft archive
purge --dry-run``) must name exactly the two that may go and change nothing; the purge must
take exactly those, write an audit record and an ingest event per study, and show on the
queue page; a job that appears between the policy's look and the purge must stop it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

import dicom_listener
from dicom_listener import IngestEvent, Instance, StudyVersion
from raddraft import job_contract
from raddraft.cli import main
from raddraft.db import session_scope, utcnow
from raddraft.settings import Settings
from report_drafts import drafting, retention
from report_drafts.tables import AuditEvent, Report, ReportVersion
from tests.conftest import reload_settings
from tests.drafts.conftest import ALGORITHM, RUN, archive_study, draft_content
from tests.drafts.helpers import make_draft
from web import queue_status
from worker import retention as purge_job

OLD = dt.timedelta(days=40)


@pytest.fixture
def retaining(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RADDRAFT_RETENTION_DAYS", "30")
    return reload_settings()


def _close(engine: Engine, report_pk: int, state: str, ago: dt.timedelta) -> None:
    """The report's head as the lifecycle leaves it once signed (or rejected) ``ago``."""
    with session_scope(engine) as session:
        session.execute(
            update(Report)
            .where(Report.id == report_pk)
            .values(state=state, updated_at=utcnow() - ago)
        )


def _files(settings: Settings, study_uid: str) -> list[Path]:
    return sorted((settings.archive_dir / study_uid).rglob("*.dcm"))


def _version_pk(engine: Engine, report_pk: int) -> int:
    with session_scope(engine) as session:
        return int(
            session.scalars(
                select(ReportVersion.id).where(ReportVersion.report_pk == report_pk)
            ).first()
        )


def _situations(engine: Engine, settings: Settings) -> dict[str, str]:
    """Study label -> StudyInstanceUID, each study in one situation."""
    uids: dict[str, str] = {}
    signed_old, study = make_draft(engine, settings, patient_id="A")
    _close(engine, signed_old, "signed", OLD)
    uids["signed long ago"] = study.study_instance_uid

    _unsigned, study = make_draft(engine, settings, patient_id="B")
    with session_scope(engine) as session:
        session.execute(update(Report).values(updated_at=utcnow() - OLD))
    uids["unsigned draft"] = study.study_instance_uid

    export_pending, study = make_draft(engine, settings, patient_id="C")
    _close(engine, export_pending, "signed", OLD)
    with session_scope(engine) as session:
        job = job_contract.ExportDicom(_version_pk(engine, export_pending), "PACS@pacs:104")
        job_contract.enqueue(session, job)
    uids["export job pending"] = study.study_instance_uid

    prior_of_open, prior = make_draft(engine, settings, patient_id="D")
    _close(engine, prior_of_open, "signed", OLD)
    current = archive_study(engine, settings, patient_id="D")
    with session_scope(engine) as session:
        drafting.record_draft(
            session,
            study_version_pk=current.study_version_pk,
            content=draft_content(current.sop_instance_uids[0]),
            run={**RUN, "prior": {"study_instance_uid": prior.study_instance_uid}},
            algorithm=ALGORITHM,
            settings=settings,
        )
    uids["prior of an unsigned draft"] = prior.study_instance_uid
    uids["the unsigned draft reading that prior"] = current.study_instance_uid

    recent, study = make_draft(engine, settings, patient_id="F")
    _close(engine, recent, "signed", dt.timedelta(days=5))
    uids["signed 5 days ago"] = study.study_instance_uid

    never_drafted = archive_study(engine, settings, patient_id="G")
    with session_scope(engine) as session:
        session.execute(
            update(StudyVersion)
            .where(StudyVersion.id == never_drafted.study_version_pk)
            .values(completed_at=utcnow() - OLD, eligible=False)
        )
    uids["not a chest study, long ago"] = never_drafted.study_instance_uid
    return uids


PURGEABLE = {"signed long ago", "not a chest study, long ago"}


def test_purge_takes_only_what_nothing_needs(
    retaining: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = retaining
    uids = _situations(engine, settings)
    before = {label: _files(settings, uid) for label, uid in uids.items()}
    assert all(before.values())

    dry = CliRunner().invoke(main, ["archive", "purge", "--dry-run", "--all"])
    assert dry.exit_code == 0, dry.output
    would = {
        line.split()[2].rstrip(":")
        for line in dry.output.splitlines()
        if line.startswith("would purge")
    }
    assert would == {uids[label] for label in PURGEABLE}
    assert "report not signed" in dry.output and "prior of kept study" in dry.output
    assert "exports pending" in dry.output or "a job for it is waiting" in dry.output
    assert {label: _files(settings, uid) for label, uid in uids.items()} == before  # dry: nothing

    run = CliRunner().invoke(main, ["archive", "purge", "--json"])
    assert run.exit_code == 0, run.output
    purged = json.loads(run.stdout)
    assert {p["study_instance_uid"] for p in purged} == {uids[label] for label in PURGEABLE}
    for label, uid in uids.items():
        if label in PURGEABLE:
            assert _files(settings, uid) == [], label
        else:
            assert _files(settings, uid) == before[label], label
    with session_scope(engine) as session:
        archived = set(session.scalars(select(Instance.path)))
        audits = session.scalars(select(AuditEvent).where(AuditEvent.action == "purge")).all()
        events = session.scalars(select(IngestEvent).where(IngestEvent.kind == "purged")).all()
        figures = queue_status.queue_figures(session, settings)["retention"]
        reports = session.scalar(select(ReportVersion.id).limit(1))
    assert not any(path.startswith(tuple(uids[label] for label in PURGEABLE)) for path in archived)
    assert {a.study_instance_uid for a in audits} == {uids[label] for label in PURGEABLE}
    assert all(a.detail["instances"] == 1 and a.detail["bytes"] > 0 for a in audits)
    assert {e.study_instance_uid for e in events} == {uids[label] for label in PURGEABLE}
    assert figures["purged_7d"] == 2 and figures["last_purge_at"]
    assert reports is not None  # the reports and their versions stay
    assert purge_job.purge(settings) == []  # nothing left to take


def test_a_job_that_appears_after_the_policy_looked_stops_the_purge(
    retaining: Settings, engine: Engine
) -> None:
    settings = retaining
    report_pk, study = make_draft(engine, settings)
    _close(engine, report_pk, "signed", OLD)
    with session_scope(engine) as session:
        [verdict] = retention.purge_candidates(session, settings)
    with session_scope(engine) as session:  # a re-send is asked for meanwhile
        job_contract.enqueue(session, job_contract.SendHl7(_version_pk(engine, report_pk)))

    def still(session: object, study_pk: int) -> bool:
        return retention.still_purgeable(session, settings, study_pk)  # type: ignore[arg-type]

    taken = dicom_listener.purge_study(
        verdict.study_pk, still_purgeable=still, record=lambda *_: None, settings=settings
    )
    assert taken is None
    assert len(_files(settings, study.study_instance_uid)) == 1


def test_retention_off_purges_nothing_and_the_schedule_waits(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    report_pk, study = make_draft(engine, settings)
    _close(engine, report_pk, "signed", OLD)
    assert purge_job.PurgeSchedule(settings).purge_if_due() == []  # RETENTION_DAYS=0
    assert _files(settings, study.study_instance_uid)
    monkeypatch.setenv("RADDRAFT_RETENTION_DAYS", "30")
    schedule = purge_job.PurgeSchedule(reload_settings())
    assert len(schedule.purge_if_due()) == 1
    assert not _files(settings, study.study_instance_uid)
    report_pk, study = make_draft(engine, settings)
    _close(engine, report_pk, "signed", OLD)
    assert schedule.purge_if_due() == []  # not due again before the interval
    assert _files(settings, study.study_instance_uid)


def test_a_scheduled_pass_takes_a_batch_and_comes_back_soon(
    retaining: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(purge_job, "BATCH", 2)
    studies = []
    for number in range(3):
        report_pk, study = make_draft(engine, retaining, patient_id=f"B{number}")
        _close(engine, report_pk, "signed", OLD)
        studies.append(study.study_instance_uid)
    schedule = purge_job.PurgeSchedule(retaining)
    assert len(schedule.purge_if_due()) == 2  # a full batch: the router's loop is not held
    assert schedule.next_at - time.monotonic() <= 1.0
    time.sleep(1.05)
    assert len(schedule.purge_if_due()) == 1
    assert schedule.next_at - time.monotonic() > 3000  # done: the interval again
    assert all(not _files(retaining, uid) for uid in studies)

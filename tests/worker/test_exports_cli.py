"""``raddraft exports --failed`` lists dead-lettered exports; ``retry ID`` sends one again."""

from __future__ import annotations

import datetime as dt

from click.testing import CliRunner
from sqlalchemy.engine import Engine

from raddraft import jobs
from raddraft.cli import main
from raddraft.db import session_scope
from raddraft.settings import Settings


def test_failed_exports_are_listed_and_retried(settings: Settings, engine: Engine) -> None:
    with session_scope(engine) as session:
        dead = jobs.enqueue(
            session,
            task="raddraft.export_dicom",
            key="export:1:PACS",
            args={"report_version_pk": 1, "destination": "PACS@pacs:104"},
            queue="io",
        ).id
        fine = jobs.enqueue(
            session,
            task="raddraft.export_dicom",
            key="export:1:OTHER",
            args={"report_version_pk": 1, "destination": "OTHER@o:104"},
            queue="io",
        ).id
        assert jobs.claim(session, dead, "w", dt.timedelta(seconds=30))
        jobs.fail(
            session,
            dead,
            "association rejected permanently",
            transient=False,
            backoff=dt.timedelta(seconds=1),
        )
    runner = CliRunner()

    listed = runner.invoke(main, ["exports", "--failed"])
    assert listed.exit_code == 0, listed.output
    assert f"{dead}\tdead" in listed.output and "rejected permanently" in listed.output
    assert f"{fine}\t" not in listed.output

    retried = runner.invoke(main, ["exports", "retry", str(dead)])
    assert retried.exit_code == 0 and f"job {dead} queued again" in retried.output
    with session_scope(engine) as session:
        job = session.get(jobs.Job, dead)
        assert job is not None and job.state == jobs.JobState.pending and job.attempts == 0
    assert "no failed exports" in runner.invoke(main, ["exports", "--failed"]).output

    # A job that is not dead cannot be "retried" into a second run.
    with session_scope(engine) as session:
        assert jobs.claim(session, fine, "w", dt.timedelta(seconds=30))
    refused = runner.invoke(main, ["exports", "retry", str(fine)])
    assert refused.exit_code != 0 and "not dead" in refused.output

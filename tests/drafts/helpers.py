"""Shared steps of the lifecycle tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from raddraft import jobs
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts import drafting
from report_drafts.content import Algorithm
from tests.drafts.conftest import ALGORITHM, RUN, ArchivedStudy, archive_study, draft_content


def make_draft(
    engine: Engine, settings: Settings, *, algorithm: Algorithm = ALGORITHM, **kw: Any
) -> tuple[int, ArchivedStudy]:
    """Archive a study and record its AI draft as the worker would; (report id, study)."""
    study = archive_study(engine, settings, **kw)
    with session_scope(engine) as session:
        row = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=draft_content(study.sop_instance_uids[0]),
            run=RUN,
            algorithm=algorithm,
            settings=settings,
        )
        return row.report_pk, study


def job_keys(engine: Engine) -> set[str]:
    with session_scope(engine) as session:
        return set(session.scalars(select(jobs.Job.key)))

"""The administrator's side of the lifecycle: draft a failed study version again, retry a job,
resolve a patient identity conflict.

All are refused to anyone but an ``admin`` and audited in the same transaction as the change.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_listener import Study, StudyVersion, resolve_identity_conflict
from raddraft import job_contract, jobs
from raddraft.db import utcnow
from report_drafts import audit
from report_drafts._version_writes import audit_report, report_for_version
from report_drafts.outbox import IDENTITY_HOLD
from report_drafts.states import (
    IllegalTransition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ReportState,
    check_transition,
)
from report_drafts.tables import Report, ReportVersion, Role, SentObject, SentState, User


def requeue(session: Session, study_version_pk: int, user: User) -> jobs.Job:
    """Draft a study version again after a failure (admin only): its draft job goes back.

    Refused (409) once a draft exists: a study version has one AI draft, never a second.
    """
    if user.role != Role.admin:
        raise PermissionDenied("only an administrator requeues drafts")
    report = report_for_version(session, study_version_pk, lock=True)
    if report.current_version > 0:
        raise IllegalTransition(report.state, ReportState.queued, "requeue (a draft exists)")
    sv = session.get(StudyVersion, study_version_pk)
    assert sv is not None
    draft = job_contract.DraftStudy(study_version_pk)
    job = session.scalar(select(jobs.Job).where(jobs.Job.key == (sv.job_key or draft.key)))
    if job is None:
        study = session.get(Study, sv.study_pk)
        job = job_contract.enqueue(
            session, draft, priority=study.priority if study else jobs.Priority.routine
        )
    elif job.state in (jobs.JobState.dead, jobs.JobState.pending):
        job.state = jobs.JobState.pending
        job.attempts = 0
        job.not_before = utcnow()
        job.finished_at = None
    elif job.state == jobs.JobState.done:
        raise IllegalTransition(report.state, ReportState.queued, "requeue (the job finished)")
    if report.state != ReportState.queued:
        check_transition(report.state, ReportState.queued, "requeue")
        report.state = ReportState.queued
        report.updated_at = utcnow()
    audit_report(
        session,
        "requeue",
        user=user,
        report=report,
        detail={"job": job.id},
    )
    session.flush()
    return job


def retry_job(session: Session, job_id: int, user: User) -> jobs.Job:
    """Give a dead job (a failed export, say) fresh attempts (admin only).

    Does its own state change rather than :func:`raddraft.jobs.retry`, which commits: here the
    audit event and the retry commit together.
    """
    if user.role != Role.admin:
        raise PermissionDenied("only an administrator retries jobs")
    job = session.get(jobs.Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.state not in (jobs.JobState.dead, jobs.JobState.pending):
        raise IllegalTransition(job.state, "pending", f"retry job {job_id}")
    job.state = jobs.JobState.pending
    job.attempts = 0
    job.not_before = utcnow()
    job.finished_at = None
    audit.record(
        session, "retry", user=user, detail={"job": job_id, "task": job.task, "key": job.key}
    )
    session.flush()
    return job


def resolve_identity(
    session: Session, conflict_id: int, user: User, *, resolution: str
) -> dict[str, Any]:
    """An administrator resolves a study's patient identity conflict (admin only, audited):
    the RIS messages held for it (:data:`report_drafts.outbox.IDENTITY_HOLD`) are released, in
    order, by their jobs (:mod:`report_drafts.delivery` drops the superseded ones).

    ``resolution`` says what they decided (e.g. "same patient: name corrected in the RIS",
    "wrong patient: study to be corrected at the modality; nothing to release" is still a
    resolution: withdraw by rejecting the draft before resolving).
    """
    if user.role != Role.admin:
        raise PermissionDenied("only an administrator resolves identity conflicts")
    try:
        conflict = resolve_identity_conflict(
            session, conflict_id, by=user.name, resolution=resolution
        )
    except LookupError as error:
        raise NotFound(str(error)) from error
    except ValueError as error:
        raise InvalidRequest(str(error)) from error
    rows = session.execute(
        select(SentObject, ReportVersion, Report)
        .join(ReportVersion, ReportVersion.id == SentObject.report_version_pk)
        .join(Report, Report.id == ReportVersion.report_pk)
        .where(
            Report.study_pk == conflict.study_pk,
            SentObject.state == SentState.held,
            SentObject.last_error == IDENTITY_HOLD,
        )
        .order_by(ReportVersion.id, SentObject.id)
    ).all()
    released: dict[tuple[int, str], Report] = {}
    for row, version_row, report in rows:
        row.state = SentState.pending
        row.last_error = None
        released[(version_row.id, row.kind)] = report
    for (version_pk, kind), report in released.items():
        job = (
            job_contract.SendHl7(version_pk) if kind == "hl7" else job_contract.PushFhir(version_pk)
        )
        job_contract.enqueue(session, job, priority=report.priority)
    study = session.get(Study, conflict.study_pk)
    detail = {
        "conflict": conflict.id,
        "resolution": conflict.resolution,
        "received": [conflict.received_name, conflict.received_birth_date, conflict.received_sex],
        "held": [conflict.held_name, conflict.held_birth_date, conflict.held_sex],
        "released": len(rows),
    }
    audit.record(
        session,
        "identity_resolved",
        user=user,
        study_instance_uid=study.study_instance_uid if study else "",
        detail=detail,
    )
    session.flush()
    return detail

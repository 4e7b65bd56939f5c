"""The draft lifecycle: from a worker's draft to a radiologist's signed (and amended) report.

Rules that hold whatever calls these functions (the API, the worker, a shell):

- Every change of content or state after drafting is a new :class:`ReportVersion` row with who,
  when and why; versions are never updated (see :mod:`report_drafts.tables`).
- Moves follow :data:`report_drafts.states.TRANSITIONS`; anything else raises
  :class:`IllegalTransition`.
- Only a user whose role is ``radiologist`` can make a version final; the user is recorded as the
  signer. Radiologist actions name the version they were made against (``expected_version``), so
  a replayed or raced request is refused (:class:`StaleVersion`) instead of applied twice.
- Signing builds the final SR and GSPS here (their UIDs are recorded in the signed version) and
  enqueues the exports in the same transaction, through :func:`raddraft.jobs.enqueue`.

The worker needs only :func:`mark_state`, :func:`record_draft`, :func:`pending_sends` and
:func:`record_sent`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import logging
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_listener.tables import Study, StudyVersion
from raddraft import jobs
from raddraft.db import utcnow
from raddraft.settings import Settings, get_settings
from report_drafts import audit, publish
from report_drafts.content import (
    DEMO_WARNING,
    Algorithm,
    Box,
    ReportContent,
    ReportStatus,
    Signer,
)
from report_drafts.states import (
    EDITABLE,
    PRE_DRAFT,
    SIGNED_STATES,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ReportState,
    StaleVersion,
    check_transition,
)
from report_drafts.tables import (
    DEVICE_ACTOR,
    DraftRun,
    EditReason,
    FindingFeedback,
    Report,
    ReportVersion,
    Role,
    SentObject,
    SentState,
    User,
)

log = logging.getLogger(__name__)

DRAFT_TASK = (
    "raddraft.draft_study"  # worker.tasks.DRAFT_STUDY; by name, report_drafts has no Celery
)


# --------------------------------------------------------------------------------------------
# Lookups


def get_report(session: Session, report_pk: int, *, lock: bool = False) -> Report:
    """The report ``report_pk``; ``lock`` holds its row until commit (PostgreSQL FOR UPDATE)."""
    query = select(Report).where(Report.id == report_pk)
    if lock:
        query = query.with_for_update()
    report = session.scalar(query)
    if report is None:
        raise NotFound(f"no report {report_pk}")
    return report


def report_for_study_version(session: Session, study_version_pk: int) -> Report | None:
    return session.scalar(select(Report).where(Report.study_version_pk == study_version_pk))


def version(session: Session, report_pk: int, number: int) -> ReportVersion:
    row = session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_pk == report_pk, ReportVersion.number == number
        )
    )
    if row is None:
        raise NotFound(f"report {report_pk} has no version {number}")
    return row


def current_version(session: Session, report: Report) -> ReportVersion:
    if report.current_version == 0:
        raise IllegalTransition(report.state, ReportState.drafted, "no draft yet")
    return version(session, report.id, report.current_version)


def current_content(session: Session, report: Report) -> ReportContent:
    return ReportContent.from_json(current_version(session, report).content)


def study_uid(session: Session, report: Report) -> str:
    return session.scalars(
        select(Study.study_instance_uid).where(Study.id == report.study_pk)
    ).one()


def draft_run(session: Session, report: Report) -> DraftRun | None:
    first = session.scalar(
        select(ReportVersion).where(ReportVersion.report_pk == report.id, ReportVersion.number == 1)
    )
    if first is None or first.draft_run_pk is None:
        return None
    return session.get(DraftRun, first.draft_run_pk)


def algorithm_of(run: DraftRun | None) -> Algorithm:
    if run is None:
        return Algorithm(name="unknown", version="", program_version="")
    return Algorithm(
        name=run.model_id,
        version=run.model_revision,
        program_version=run.program_version,
        demo=run.demo,
    )


# --------------------------------------------------------------------------------------------
# The worker's side


def demo_mode(session: Session, live_within: dt.timedelta = dt.timedelta(minutes=5)) -> bool:
    """Whether demo output is around: a live worker runs the demo model, or a report that is
    not superseded was drafted by it. Pages, ``/healthz`` and the queue say so loudly then."""
    since = utcnow() - live_within
    worker_demo = session.scalar(
        select(exists().where(jobs.WorkerBeat.demo.is_(True), jobs.WorkerBeat.last_seen >= since))
    )
    if worker_demo:
        return True
    live_demo = session.scalar(
        select(
            exists().where(
                DraftRun.demo.is_(True),
                DraftRun.study_version_pk == Report.study_version_pk,
                Report.state != ReportState.superseded,
            )
        )
    )
    return bool(live_demo)


def mark_state(
    session: Session, study_version_pk: int, state: ReportState | str, *, reason: str = ""
) -> Report:
    """Record that a study version's draft is ``queued``, ``drafting`` or ``failed``.

    Creates the report on first use. Idempotent, and never moves a report that already holds a
    draft: a late "drafting" or "failed" from a retried job cannot demote a draft a radiologist
    may be reading (the call is logged and ignored).
    """
    state = ReportState(state)
    if state not in PRE_DRAFT:
        raise InvalidRequest(f"mark_state sets only {sorted(PRE_DRAFT)}, not {state}")
    report = _report_for_version(session, study_version_pk)
    if report.current_version > 0 or report.state == ReportState.superseded:
        log.info("mark_state %s ignored: report %s is %s", state, report.id, report.state)
        return report
    if report.state != state:
        check_transition(report.state, state, "mark_state")
        before = report.state
        report.state = state
        report.failure = (reason or None) if state == ReportState.failed else None
        report.updated_at = utcnow()
        _audit(
            session,
            "state",
            report=report,
            detail={"from": before, "to": state, "reason": reason},
        )
    session.flush()
    return report


def record_draft(
    session: Session,
    *,
    study_version_pk: int,
    content: ReportContent,
    run: dict[str, Any],
    algorithm: Algorithm,
    settings: Settings | None = None,
) -> ReportVersion:
    """Store the AI draft of a study version as version 1 (preliminary, state ``drafted``).

    ``run`` is the provenance: ``stages`` (list of {stage, question, answer, reasoning,
    seconds, ...}), ``settings``, ``prior`` ({"study_instance_uid": ...} or {"none": why}) and
    ``timings``. Builds the preliminary SR and GSPS and enqueues their export (and the RIS
    messages), unless the model is a demo and ``allow_demo_export`` is off. Supersedes the
    unsigned reports of the study's earlier versions.

    Idempotent: a second call for the same study version returns the existing draft and writes
    nothing. Raises :class:`IllegalTransition` when the study version's report was superseded
    before its draft arrived.
    """
    settings = settings or get_settings()
    report = _report_for_version(session, study_version_pk, lock=True)
    if report.current_version > 0:
        return version(session, report.id, 1)
    check_transition(report.state, ReportState.drafted, "record_draft")

    provenance = DraftRun(
        study_version_pk=study_version_pk,
        model_id=algorithm.name,
        model_revision=algorithm.version,
        program_version=algorithm.program_version,
        demo=algorithm.demo,
        stages=list(run.get("stages", [])),
        settings=dict(run.get("settings", {})),
        prior=dict(run.get("prior", {})),
        timings=dict(run.get("timings", {})),
    )
    session.add(provenance)
    session.flush()

    extra = dict(content.extra)
    if algorithm.demo:
        extra["warning"] = DEMO_WARNING
    # A draft is preliminary and unsigned whatever the caller passed.
    draft = dataclasses.replace(content, status=ReportStatus.preliminary, signer=None, extra=extra)
    row, _ = _publish_version(
        session,
        settings,
        report,
        draft,
        algorithm=algorithm,
        previous_sr_uid=None,
        state=ReportState.drafted,
        action="draft",
        user=None,
        note="AI draft",
        draft_run_pk=provenance.id,
    )
    report.failure = None
    _audit(
        session,
        "draft",
        report=report,
        version=row.number,
        detail={"model": algorithm.name, "revision": algorithm.version, "demo": algorithm.demo},
    )
    _supersede_older(session, report)
    session.flush()
    return row


def pending_sends(
    session: Session,
    report_version_pk: int,
    *,
    kinds: tuple[str, ...] = ("sr", "gsps"),
    destination: str | None = None,
) -> list[SentObject]:
    """What an export job still has to send for a version: rows not sent and not held.

    The payload of each is the file ``publish.outbox_file(settings, row)``, written once.
    """
    query = select(SentObject).where(
        SentObject.report_version_pk == report_version_pk,
        SentObject.kind.in_(kinds),
        SentObject.state.in_([SentState.pending, SentState.failed]),
    )
    if destination is not None:
        query = query.where(SentObject.destination == destination)
    return list(session.scalars(query.order_by(SentObject.id)))


def record_sent(
    session: Session, sent_object_pk: int, *, ok: bool, error: str | None = None
) -> SentObject:
    """Record one attempt to send an object (the worker calls this per object per try)."""
    row = session.get(SentObject, sent_object_pk)
    if row is None:
        raise NotFound(f"no sent object {sent_object_pk}")
    row.attempts += 1
    if ok:
        row.state = SentState.sent
        row.sent_at = utcnow()
        row.last_error = None
    else:
        row.state = SentState.failed
        row.last_error = (error or "failed")[:4000]
    version_row = session.get(ReportVersion, row.report_version_pk)
    report = session.get(Report, version_row.report_pk) if version_row else None
    audit.record(
        session,
        "message" if row.kind in ("hl7", "fhir") else "export",
        study_instance_uid=study_uid(session, report) if report else "",
        report_pk=report.id if report else None,
        version=version_row.number if version_row else None,
        detail={
            "kind": row.kind,
            "identifier": row.identifier,
            "destination": row.destination,
            "ok": ok,
            "error": row.last_error,
        },
    )
    session.flush()
    return row


# --------------------------------------------------------------------------------------------
# The radiologist's side


def open_report(session: Session, report_pk: int, user: User) -> Report:
    """Record that ``user`` viewed the report; a radiologist's first view starts the review.

    The first view by a radiologist is when the reader-study clock starts (time to sign).
    """
    report = get_report(session, report_pk)
    _audit(
        session,
        "view",
        user=user,
        report=report,
        version=report.current_version or None,
    )
    if user.role == Role.radiologist and report.state in EDITABLE:
        report = get_report(session, report_pk, lock=True)
        _start_review(report, user)
    session.flush()
    return report


def edit_text(
    session: Session,
    report_pk: int,
    user: User,
    *,
    expected_version: int,
    findings_text: str | None = None,
    impression: str | None = None,
    progression: str | None = None,
    note: str = "",
) -> ReportVersion:
    """Change the draft's text; a new preliminary version (state ``in_review``)."""
    report, content = _for_radiologist_change(session, report_pk, user, expected_version)
    check_transition(report.state, ReportState.in_review, "edit")
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "findings_text": findings_text,
            "impression": impression,
            "progression": progression,
        }.items()
        if v is not None
    }
    new = dataclasses.replace(content, **changes)
    if new == content:
        return current_version(session, report)
    _start_review(report, user)
    row = _new_version(
        session,
        report,
        content=new,
        state=ReportState.in_review,
        action="edit",
        user=user,
        note=note,
    )
    _audit(
        session,
        "edit",
        user=user,
        report=report,
        version=row.number,
        detail={"fields": sorted(changes)},
    )
    return row


def finding_feedback(
    session: Session,
    report_pk: int,
    user: User,
    *,
    expected_version: int,
    tracking_uid: str,
    action: str,
    label: str | None = None,
    box: Box | None = None,
) -> ReportVersion:
    """Accept, reject or edit (label or box) one finding; a new version and a feedback row."""
    if action not in ("accept", "reject", "edit"):
        raise InvalidRequest("action is accept, reject or edit")
    report, content = _for_radiologist_change(session, report_pk, user, expected_version)
    check_transition(report.state, ReportState.in_review, f"finding {action}")
    matches = [f for f in content.findings if f.tracking_uid == tracking_uid]
    if not matches:
        raise NotFound(f"report {report_pk} has no finding {tracking_uid}")
    before = matches[0]
    if action == "accept":
        after = dataclasses.replace(before, accepted=True)
    elif action == "reject":
        after = dataclasses.replace(before, accepted=False)
    else:
        if label is None and box is None:
            raise InvalidRequest("an edit changes the label or the box")
        if label is not None and not label.strip():
            raise InvalidRequest("a finding label cannot be empty")
        if box is not None:
            if box.x1 <= box.x0 or box.y1 <= box.y0 or min(box.x0, box.y0) < 0:
                raise InvalidRequest("a box needs 0 <= x0 < x1 and 0 <= y0 < y1")
            if before.sop_instance_uid is None:
                raise InvalidRequest("this finding is on no image; it cannot have a box")
        after = dataclasses.replace(
            before,
            label=label.strip() if label is not None else before.label,
            box=box if box is not None else before.box,
            accepted=True,
        )
    new = dataclasses.replace(
        content,
        findings=tuple(after if f.tracking_uid == tracking_uid else f for f in content.findings),
    )
    _start_review(report, user)
    row = _new_version(
        session,
        report,
        content=new,
        state=ReportState.in_review,
        action=f"finding_{action}",
        user=user,
        note=f"{action} {before.label}",
    )
    session.add(
        FindingFeedback(
            report_pk=report.id,
            version_number=row.number,
            tracking_uid=tracking_uid,
            action=action,
            before=dataclasses.asdict(before),
            after=dataclasses.asdict(after),
            user_pk=user.id,
        )
    )
    _audit(
        session,
        "feedback",
        user=user,
        report=report,
        version=row.number,
        detail={"tracking_uid": tracking_uid, "action": action},
    )
    return row


def sign(
    session: Session,
    report_pk: int,
    user: User,
    *,
    expected_version: int,
    edit_reason: EditReason | str,
    settings: Settings | None = None,
) -> ReportVersion:
    """Make the current draft final under ``user``'s name (role radiologist only).

    Builds the final SR (new SOP Instance UID, complete/verified/final, predecessor the
    preliminary SR, verifying observer ``user``) and a GSPS for the accepted findings, records
    their UIDs in the new version, and enqueues the exports in this transaction. A stale or
    replayed request (``expected_version`` not current, or the report already signed) is
    refused with a 409 error and creates nothing.
    """
    settings = settings or get_settings()
    try:
        reason = EditReason(edit_reason)
    except ValueError as error:
        raise InvalidRequest(f"edit_reason is one of {[r.value for r in EditReason]}") from error
    report, content = _for_radiologist_change(session, report_pk, user, expected_version)
    check_transition(report.state, ReportState.signed, "sign")
    _start_review(report, user)
    signed_at = utcnow()
    final = dataclasses.replace(
        content,
        status=ReportStatus.final,
        signer=_signer(user, settings),
        extra={**content.extra, "signed_at": signed_at.isoformat()},
    )
    run = draft_run(session, report)
    algorithm = algorithm_of(run)
    previous = version(session, report.id, 1).sr_sop_instance_uid
    assert report.first_opened_at is not None  # set by _start_review
    seconds = max((signed_at - report.first_opened_at).total_seconds(), 0.0)
    row, built = _publish_version(
        session,
        settings,
        report,
        final,
        algorithm=algorithm,
        previous_sr_uid=previous,
        state=ReportState.signed,
        action="sign",
        user=user,
        note="signed",
        edit_reason=reason,
        extra_diff={"seconds_to_sign": seconds},
    )
    _audit(
        session,
        "sign",
        user=user,
        report=report,
        version=row.number,
        detail={
            "edit_reason": reason,
            "seconds_to_sign": seconds,
            "sr": built.sr_uid,
            "edit_ratio": row.diff.get("edit_ratio"),
        },
    )
    return row


def reject(
    session: Session, report_pk: int, user: User, *, expected_version: int, reason: str
) -> ReportVersion:
    """Refuse the draft: a new version in state ``rejected``; nothing final is written or sent."""
    if not reason.strip():
        raise InvalidRequest("say why the draft is rejected")
    report, content = _for_radiologist_change(session, report_pk, user, expected_version)
    check_transition(report.state, ReportState.rejected, "reject")
    _start_review(report, user)
    row = _new_version(
        session,
        report,
        content=content,
        state=ReportState.rejected,
        action="reject",
        user=user,
        note=reason.strip(),
    )
    _audit(
        session,
        "reject",
        user=user,
        report=report,
        version=row.number,
        detail={"reason": reason.strip()},
    )
    return row


def amend(
    session: Session,
    report_pk: int,
    user: User,
    *,
    expected_version: int,
    reason: str,
    findings_text: str | None = None,
    impression: str | None = None,
    progression: str | None = None,
    corrected: bool = False,
    settings: Settings | None = None,
) -> ReportVersion:
    """Change a signed report: a new final-grade version, status amended (or corrected).

    A new SR is built whose predecessor is the latest signed one, and sent like the signed one.
    """
    settings = settings or get_settings()
    if not reason.strip():
        raise InvalidRequest("an amendment needs a reason")
    report, content = _for_radiologist_change(session, report_pk, user, expected_version)
    target = ReportState.corrected if corrected else ReportState.amended
    check_transition(report.state, target, "amend")
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "findings_text": findings_text,
            "impression": impression,
            "progression": progression,
        }.items()
        if v is not None
    }
    if not changes:
        raise InvalidRequest("an amendment changes the findings, impression or progression")
    now = utcnow()
    new = dataclasses.replace(
        content,
        **changes,
        status=ReportStatus.corrected if corrected else ReportStatus.amended,
        signer=_signer(user, settings),
        extra={**content.extra, "signed_at": now.isoformat(), "amendment_reason": reason},
    )
    algorithm = algorithm_of(draft_run(session, report))
    previous = current_version(session, report).sr_sop_instance_uid
    row, built = _publish_version(
        session,
        settings,
        report,
        new,
        algorithm=algorithm,
        previous_sr_uid=previous,
        state=target,
        action="correct" if corrected else "amend",
        user=user,
        note=reason.strip(),
    )
    _audit(
        session,
        "amend",
        user=user,
        report=report,
        version=row.number,
        detail={"reason": reason.strip(), "status": new.status, "sr": built.sr_uid},
    )
    return row


# --------------------------------------------------------------------------------------------
# The administrator's side


def requeue(session: Session, study_version_pk: int, user: User) -> jobs.Job:
    """Draft a study version again after a failure (admin only): its draft job goes back.

    Refused (409) once a draft exists: a study version has one AI draft, never a second.
    """
    if user.role != Role.admin:
        raise PermissionDenied("only an administrator requeues drafts")
    report = _report_for_version(session, study_version_pk, lock=True)
    if report.current_version > 0:
        raise IllegalTransition(report.state, ReportState.queued, "requeue (a draft exists)")
    sv = session.get(StudyVersion, study_version_pk)
    assert sv is not None
    key = sv.job_key or f"draft:version:{study_version_pk}"
    job = session.scalar(select(jobs.Job).where(jobs.Job.key == key))
    if job is None:
        study = session.get(Study, sv.study_pk)
        job = jobs.enqueue(
            session,
            task=DRAFT_TASK,
            key=key,
            args={"study_version_pk": study_version_pk},
            queue="gpu",
            priority=study.priority if study else jobs.Priority.routine,
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
    _audit(
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


# --------------------------------------------------------------------------------------------
# Internals


def _publish_version(
    session: Session,
    settings: Settings,
    report: Report,
    content: ReportContent,
    *,
    algorithm: Algorithm,
    previous_sr_uid: str | None,
    **version_fields: Any,
) -> tuple[ReportVersion, publish.BuiltDicom]:
    """Build the version's SR and GSPS, store the version, and register what it sends."""
    built = publish.build_dicom(
        session,
        settings,
        report=report,
        content=content,
        algorithm=algorithm,
        previous_sr_uid=previous_sr_uid,
    )
    row = _new_version(
        session,
        report,
        content=content,
        built=built,
        predecessor_sr_uid=previous_sr_uid,
        **version_fields,
    )
    publish.register_outbound(
        session, settings, row, built, algorithm=algorithm, send=_may_send(settings, algorithm)
    )
    return row, built


def _audit(
    session: Session,
    action: str,
    *,
    report: Report,
    user: User | None = None,
    version: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """An audit event about ``report``, filed under its study."""
    audit.record(
        session,
        action,
        user=user,
        study_instance_uid=study_uid(session, report),
        report_pk=report.id,
        version=version,
        detail=detail,
    )


def _report_for_version(session: Session, study_version_pk: int, *, lock: bool = False) -> Report:
    query = select(Report).where(Report.study_version_pk == study_version_pk)
    report = session.scalar(query.with_for_update() if lock else query)
    if report is not None:
        return report
    sv = session.get(StudyVersion, study_version_pk)
    if sv is None:
        raise NotFound(f"no study version {study_version_pk}")
    study = session.get(Study, sv.study_pk)
    assert study is not None
    import uuid

    report = Report(
        uid=str(uuid.uuid4()),
        study_version_pk=study_version_pk,
        study_pk=sv.study_pk,
        state=ReportState.queued,
        priority=study.priority,
        current_version=0,
    )
    try:
        with session.begin_nested():
            session.add(report)
            session.flush()
    except IntegrityError:
        # Another process created it between our read and insert: use theirs.
        report = session.scalars(query).one()
    return report


def _for_radiologist_change(
    session: Session, report_pk: int, user: User, expected_version: int
) -> tuple[Report, ReportContent]:
    """Check role and version before a radiologist's change; lock the report row."""
    if user.role != Role.radiologist or not user.active:
        raise PermissionDenied(f"role {user.role!r} cannot change or sign reports")
    report = get_report(session, report_pk, lock=True)
    if report.current_version != expected_version:
        raise StaleVersion(expected_version, report.current_version)
    return report, current_content(session, report)


def _start_review(report: Report, user: User) -> None:
    if report.first_opened_at is None and user.role == Role.radiologist:
        report.first_opened_at = utcnow()
        report.first_opened_by_pk = user.id
    if report.state == ReportState.drafted:
        report.state = ReportState.in_review
        report.updated_at = utcnow()


def _signer(user: User, settings: Settings) -> Signer:
    return Signer(
        name=user.display_name or user.name,
        login=user.name,
        organization=settings.institution_name,
    )


def _may_send(settings: Settings, algorithm: Algorithm) -> bool:
    """A random-weight demo model's text never reaches PACS or RIS unless explicitly allowed."""
    return not algorithm.demo or settings.allow_demo_export


def report_text(content: ReportContent) -> str:
    parts = [content.findings_text, content.impression]
    if content.progression:
        parts.append(content.progression)
    return "\n\n".join(parts)


def diff_stats(draft: ReportContent, now: ReportContent) -> dict[str, Any]:
    """How far ``now`` is from the AI draft: the reader study's text-change figure."""
    a, b = report_text(draft), report_text(now)
    ratio = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    by_uid = {f.tracking_uid: f for f in draft.findings}
    rejected = sum(1 for f in now.findings if not f.accepted)
    edited = sum(
        1
        for f in now.findings
        if f.tracking_uid in by_uid
        and (f.label != by_uid[f.tracking_uid].label or f.box != by_uid[f.tracking_uid].box)
    )
    return {
        "text_changed": a != b,
        "edit_ratio": round(1.0 - ratio, 6),
        "chars_draft": len(a),
        "chars_now": len(b),
        "findings_rejected": rejected,
        "findings_edited": edited,
        "unchanged": a == b and rejected == 0 and edited == 0,
    }


def _new_version(
    session: Session,
    report: Report,
    *,
    content: ReportContent,
    state: ReportState,
    action: str,
    user: User | None,
    note: str = "",
    edit_reason: EditReason | None = None,
    draft_run_pk: int | None = None,
    built: publish.BuiltDicom | None = None,
    predecessor_sr_uid: str | None = None,
    extra_diff: dict[str, Any] | None = None,
) -> ReportVersion:
    """Insert the next version and move the report head to it (never touches older rows)."""
    number = report.current_version + 1
    if number == 1:
        diff: dict[str, Any] = {}
    else:
        diff = diff_stats(ReportContent.from_json(version(session, report.id, 1).content), content)
    diff.update(extra_diff or {})
    row = ReportVersion(
        report_pk=report.id,
        number=number,
        content=content.to_json(),
        status=content.status,
        state=state,
        action=action,
        actor=user.name if user else DEVICE_ACTOR,
        user_pk=user.id if user else None,
        note=note,
        edit_reason=edit_reason,
        draft_run_pk=draft_run_pk,
        sr_sop_instance_uid=built.sr_uid if built else None,
        gsps_sop_instance_uids=list(built.gsps_uids) if built else [],
        predecessor_sr_uid=predecessor_sr_uid,
        diff=diff,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as error:
        # Two requests raced past the version check (possible on SQLite, which has no row
        # locks): the unique (report, number) lets only one of them write.
        raise StaleVersion(number - 1, number) from error
    report.current_version = number
    report.state = state
    report.updated_at = utcnow()
    session.flush()
    return row


def _supersede_older(session: Session, newest: Report) -> None:
    """Leave one live draft per study: the latest study version's; unsigned older ones yield.

    Handles both orders (a late draft of an older study version is superseded at once).
    Signed reports stay as they are: they were sent, and only an amendment changes them.
    """
    rows = session.execute(
        select(Report, StudyVersion.number)
        .join(StudyVersion, StudyVersion.id == Report.study_version_pk)
        .where(Report.study_pk == newest.study_pk, Report.current_version > 0)
        .order_by(StudyVersion.number.desc())
    ).all()
    if not rows:
        return
    live = rows[0][0]
    for report, _number in rows[1:]:
        if report.state in SIGNED_STATES or report.state == ReportState.superseded:
            continue
        content = current_content(session, report)
        check_transition(report.state, ReportState.superseded, "supersede")
        _new_version(
            session,
            report,
            content=content,
            state=ReportState.superseded,
            action="supersede",
            user=None,
            note=f"superseded by report {live.id} (later study version)",
        )
        report.superseded_by_pk = live.id
        _audit(
            session,
            "supersede",
            report=report,
            version=report.current_version,
            detail={"by_report": live.id},
        )
    # Pre-draft reports of older study versions will never be needed: supersede them too.
    stale = session.execute(
        select(Report)
        .join(StudyVersion, StudyVersion.id == Report.study_version_pk)
        .where(
            Report.study_pk == newest.study_pk,
            Report.current_version == 0,
            Report.state.in_(list(PRE_DRAFT)),
            StudyVersion.number < rows[0][1],
        )
    ).scalars()
    for report in stale:
        report.state = ReportState.superseded
        report.superseded_by_pk = live.id
        report.updated_at = utcnow()

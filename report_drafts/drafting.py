"""The worker's side of the lifecycle: a study version's state before its draft, and the draft.

The worker calls :func:`mark_state` (``queued``, ``drafting``, ``failed``) and
:func:`record_draft`; the draft is version 1 of the study version's report, preliminary and
unsigned, and supersedes the unsigned drafts of the study's earlier versions.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from dicom_listener import StudyVersion
from raddraft.db import utcnow
from raddraft.settings import Settings, get_settings
from report_drafts import notifications, reconcile
from report_drafts._version_writes import (
    audit_report,
    may_send,
    new_version,
    publish_version,
    report_for_version,
    withdraw_version,
)
from report_drafts.content import DEMO_WARNING, Algorithm, ReportContent, ReportStatus
from report_drafts.states import (
    PRE_DRAFT,
    SIGNED_STATES,
    InvalidRequest,
    ReportState,
    check_transition,
)
from report_drafts.tables import DraftRun, Report, ReportVersion
from report_drafts.text_safety import safe_content
from report_drafts.version_reads import current_content, version

log = logging.getLogger(__name__)


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
    report = report_for_version(session, study_version_pk)
    if report.current_version > 0 or report.state == ReportState.superseded:
        log.info("mark_state %s ignored: report %s is %s", state, report.id, report.state)
        return report
    if report.state != state:
        check_transition(report.state, state, "mark_state")
        before = report.state
        report.state = state
        report.failure = (reason or None) if state == ReportState.failed else None
        report.updated_at = utcnow()
        audit_report(
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
    source_files: Mapping[str, Path] | None = None,
) -> ReportVersion:
    """Store the AI draft of a study version as version 1 (preliminary, state ``drafted``).

    ``source_files`` (SOP Instance UID -> local file) are the images the worker read, for a
    worker without the archive's disk: the SR and GSPS reference them.

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
    report = report_for_version(session, study_version_pk, lock=True)
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

    content = safe_content(content)  # the worker did; a direct caller may not have
    extra = dict(content.extra)
    if algorithm.demo:
        extra["warning"] = DEMO_WARNING
    # A draft is preliminary and unsigned whatever the caller passed.
    draft = dataclasses.replace(content, status=ReportStatus.preliminary, signer=None, extra=extra)
    draft = reconcile.reconciled(draft, settings.critical_findings)
    if draft.critical:
        # Before publishing, so the SR, the RIS messages and their jobs are STAT too.
        notifications.raise_critical(session, report, list(draft.critical))
    live = _is_live(session, report)
    if live:
        # The older drafts' withdrawals are written before this draft, so their versions (and
        # outbox rows) come first in the study's delivery order (report_drafts.delivery).
        _supersede_older(session, settings, report)
    row, _ = publish_version(
        session,
        settings,
        report,
        draft,
        algorithm=algorithm,
        previous_sr_uid=None,
        source_files=source_files,
        state=ReportState.drafted,
        action="draft",
        user=None,
        note="AI draft",
        draft_run_pk=provenance.id,
    )
    report.failure = None
    if draft.critical:
        notifications.notify_critical(
            session,
            settings,
            report,
            row,
            list(draft.critical),
            send=may_send(settings, algorithm),
        )
    audit_report(
        session,
        "draft",
        report=report,
        version=row.number,
        detail={"model": algorithm.name, "revision": algorithm.version, "demo": algorithm.demo},
    )
    if not live:
        # A late draft of an older study version: superseded at once, after it exists.
        _supersede_older(session, settings, report)
    session.flush()
    return row


def _is_live(session: Session, report: Report) -> bool:
    """Whether ``report`` belongs to the study's latest study version among drafted reports."""
    mine = select(StudyVersion.number).where(StudyVersion.id == report.study_version_pk)
    newer = session.scalar(
        select(Report.id)
        .join(StudyVersion, StudyVersion.id == Report.study_version_pk)
        .where(
            Report.study_pk == report.study_pk,
            Report.id != report.id,
            Report.current_version > 0,
            StudyVersion.number > mine.scalar_subquery(),
        )
        .limit(1)
    )
    return newer is None


def _supersede_older(session: Session, settings: Settings, newest: Report) -> None:
    """Leave one live draft per study: the latest study version's; unsigned older ones yield.

    Handles both orders (a late draft of an older study version is superseded at once).
    Signed reports stay as they are: they were sent, and only an amendment changes them.
    What was sent of a superseded draft is withdrawn (IOCM note, HL7 X/W, FHIR
    entered-in-error); the newer draft's objects take its place.
    """
    rows = session.execute(
        select(Report, StudyVersion.number)
        .join(StudyVersion, StudyVersion.id == Report.study_version_pk)
        .where(
            Report.study_pk == newest.study_pk,
            or_(Report.current_version > 0, Report.id == newest.id),
        )
        .order_by(StudyVersion.number.desc())
    ).all()
    if not rows:
        return
    live = rows[0][0]
    for report, _number in rows[1:]:
        if report.state in SIGNED_STATES or report.state == ReportState.superseded:
            continue
        check_transition(report.state, ReportState.superseded, "supersede")
        note = f"superseded by report {live.id} (later study version)"
        if report.state == ReportState.rejected:
            # Its rejection already withdrew what was sent: nothing more leaves.
            new_version(
                session,
                report,
                content=current_content(session, report),
                state=ReportState.superseded,
                action="supersede",
                user=None,
                note=note,
            )
        else:
            withdraw_version(
                session,
                settings,
                report,
                state=ReportState.superseded,
                action="supersede",
                user=None,
                note=note,
                why="AI draft superseded by a newer draft of a later study version "
                f"(report {live.uid})",
            )
        report.superseded_by_pk = live.id
        audit_report(
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

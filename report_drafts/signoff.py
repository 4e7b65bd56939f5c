"""The radiologist's side of the lifecycle: open, edit, judge findings, sign, reject, amend.

Only a user whose role is ``radiologist`` changes a report, and every change names the version
it was made against (``expected_version``): a replayed or raced request is refused
(:class:`StaleVersion`) instead of applied twice. Signing makes the final version under the
radiologist's name; its SR and GSPS are built and their sending enqueued in the same
transaction. Moves follow :data:`report_drafts.states.TRANSITIONS`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy.orm import Session

from raddraft.db import utcnow
from raddraft.settings import Settings, get_settings
from report_drafts import outbox, reconcile
from report_drafts._version_writes import (
    audit_report,
    new_version,
    publish_version,
    signer_for,
    start_review,
    withdraw_version,
)
from report_drafts.content import Box, Finding, ReportContent, ReportStatus
from report_drafts.states import (
    EDITABLE,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ReportState,
    StaleVersion,
    check_transition,
)
from report_drafts.tables import EditReason, FindingFeedback, Report, ReportVersion, Role, User
from report_drafts.text_safety import clean_text
from report_drafts.version_reads import (
    algorithm_of,
    current_content,
    current_version,
    draft_run,
    get_report,
    version,
)


def open_report(session: Session, report_pk: int, user: User) -> Report:
    """Record that ``user`` viewed the report; a radiologist's first view starts the review.

    The first view by a radiologist is when the reader-study clock starts (time to sign).
    """
    report = get_report(session, report_pk)
    audit_report(
        session,
        "view",
        user=user,
        report=report,
        version=report.current_version or None,
    )
    if user.role == Role.radiologist and report.state in EDITABLE:
        report = get_report(session, report_pk, lock=True)
        start_review(report, user)
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
    changes = _text_changes(findings_text, impression, progression)
    new = dataclasses.replace(content, **changes)
    if new == content:
        return current_version(session, report)
    new = reconcile.after_review_change(new)
    start_review(report, user)
    row = new_version(
        session,
        report,
        content=new,
        state=ReportState.in_review,
        action="edit",
        user=user,
        note=note,
    )
    audit_report(
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
            _check_box(box)
            if before.sop_instance_uid is None:
                raise InvalidRequest("this finding is on no image; it cannot have a box")
        after = dataclasses.replace(
            before,
            label=label.strip() if label is not None else before.label,
            box=box if box is not None else before.box,
            accepted=True,
        )
    findings = tuple(after if f.tracking_uid == tracking_uid else f for f in content.findings)
    new = reconcile.after_review_change(dataclasses.replace(content, findings=findings))
    start_review(report, user)
    row = new_version(
        session,
        report,
        content=new,
        state=ReportState.in_review,
        action=f"finding_{action}",
        user=user,
        note=f"{action} {before.label}",
    )
    _record_feedback(
        session, report, user, row, tracking_uid, action, dataclasses.asdict(before), after
    )
    return row


def add_finding(
    session: Session,
    report_pk: int,
    user: User,
    *,
    expected_version: int,
    label: str,
    sop_instance_uid: str | None = None,
    box: Box | None = None,
    laterality: str | None = None,
) -> ReportVersion:
    """Add a finding the model missed, with a box drawn on one image (or on none).

    A new version (state ``in_review``) and a feedback row with action ``add``, so the reader
    figures count what the model missed per label.
    """
    if not label.strip():
        raise InvalidRequest("a finding label cannot be empty")
    if box is not None:
        if sop_instance_uid is None:
            raise InvalidRequest("a box is drawn on an image: name its SOP Instance UID")
        _check_box(box)
    if laterality not in (None, "left", "right", "bilateral"):
        raise InvalidRequest("laterality is left, right or bilateral")
    report, content = _for_radiologist_change(session, report_pk, user, expected_version)
    check_transition(report.state, ReportState.in_review, "finding add")
    if sop_instance_uid is not None and sop_instance_uid not in _report_images(session, report):
        raise InvalidRequest(f"image {sop_instance_uid} is not part of this report's study")
    added = Finding(
        tracking_uid=str(generate_uid()),
        label=label.strip(),
        sop_instance_uid=sop_instance_uid,
        box=box,
        laterality=laterality,
        accepted=True,
        added_by=user.name,
    )
    new = reconcile.after_review_change(
        dataclasses.replace(content, findings=(*content.findings, added)), decided=added.label
    )
    start_review(report, user)
    row = new_version(
        session,
        report,
        content=new,
        state=ReportState.in_review,
        action="finding_add",
        user=user,
        note=f"add {added.label}",
    )
    _record_feedback(
        session, report, user, row, added.tracking_uid, "add", {}, added, label=added.label
    )
    return row


def _report_images(session: Session, report: Report) -> set[str]:
    return {i.sop_instance_uid for i in outbox.source_instances(session, report)}


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
    if report.order_cancelled_at is not None:
        raise IllegalTransition(report.state, ReportState.signed, "sign: the order was cancelled")
    check_transition(report.state, ReportState.signed, "sign")
    start_review(report, user)
    signed_at = utcnow()
    final = dataclasses.replace(
        content,
        status=ReportStatus.final,
        signer=signer_for(user, settings),
        extra={**content.extra, "signed_at": signed_at.isoformat()},
    )
    # What the radiologist signed decides whether the final is flagged critical (AA, STAT).
    final = reconcile.reconciled(final, settings.critical_findings)
    run = draft_run(session, report)
    algorithm = algorithm_of(run)
    previous = version(session, report.id, 1).sr_sop_instance_uid
    assert report.first_opened_at is not None  # set by start_review
    seconds = max((signed_at - report.first_opened_at).total_seconds(), 0.0)
    row, built = publish_version(
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
    audit_report(
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
    session: Session,
    report_pk: int,
    user: User,
    *,
    expected_version: int,
    reason: str,
    settings: Settings | None = None,
) -> ReportVersion:
    """Refuse the draft: a new version in state ``rejected``; nothing final is written.

    What was sent of the draft is withdrawn in the same transaction
    (:func:`report_drafts._version_writes.withdraw_version`): an IOCM rejection note to PACS,
    HL7 OBR-25 X / OBX-11 W and FHIR entered-in-error to the RIS, each only where the draft
    reached.
    """
    settings = settings or get_settings()
    if not reason.strip():
        raise InvalidRequest("say why the draft is rejected")
    report, _content = _for_radiologist_change(session, report_pk, user, expected_version)
    check_transition(report.state, ReportState.rejected, "reject")
    start_review(report, user)
    row = withdraw_version(
        session,
        settings,
        report,
        state=ReportState.rejected,
        action="reject",
        user=user,
        note=reason.strip(),
        why=f"AI draft rejected by radiologist {user.display_name or user.name}: {reason.strip()}",
    )
    audit_report(
        session,
        "reject",
        user=user,
        report=report,
        version=row.number,
        detail={"reason": reason.strip()},
    )
    return row


def amend(  # noqa: PLR0913 (the fields an amendment may change, by name)
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
    changes = _text_changes(findings_text, impression, progression)
    if not changes:
        raise InvalidRequest("an amendment changes the findings, impression or progression")
    now = utcnow()
    # The coded findings follow the amended words (laterality, site, presence).
    restructured, structure = reconcile.structure_from_text(dataclasses.replace(content, **changes))
    new = dataclasses.replace(
        restructured,
        status=ReportStatus.corrected if corrected else ReportStatus.amended,
        signer=signer_for(user, settings),
        extra={
            **content.extra,
            "signed_at": now.isoformat(),
            "amendment_reason": reason,
            **({"structure_changes": structure} if structure else {}),
        },
    )
    algorithm = algorithm_of(draft_run(session, report))
    previous = current_version(session, report).sr_sop_instance_uid
    row, built = publish_version(
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
    audit_report(
        session,
        "amend",
        user=user,
        report=report,
        version=row.number,
        detail={
            "reason": reason.strip(),
            "status": new.status,
            "sr": built.sr_uid,
            "structure_changes": structure,
        },
    )
    return row


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


def _record_feedback(
    session: Session,
    report: Report,
    user: User,
    row: ReportVersion,
    tracking_uid: str,
    action: str,
    before: dict[str, Any],
    after: Finding,
    **detail: str,
) -> None:
    """One finding-feedback row (the reader study's per-label figures) and its audit event."""
    session.add(
        FindingFeedback(
            report_pk=report.id,
            version_number=row.number,
            tracking_uid=tracking_uid,
            action=action,
            before=before,
            after=dataclasses.asdict(after),
            user_pk=user.id,
        )
    )
    audit_report(
        session,
        "feedback",
        user=user,
        report=report,
        version=row.number,
        detail={"tracking_uid": tracking_uid, "action": action, **detail},
    )


def _text_changes(
    findings_text: str | None, impression: str | None, progression: str | None
) -> dict[str, Any]:
    """The text fields a radiologist changed, cleaned as every builder would clean them (a
    pasted control character would be dropped on the way out: store what will be sent)."""
    given = {"findings_text": findings_text, "impression": impression, "progression": progression}
    return {k: clean_text(v) for k, v in given.items() if v is not None}


def _check_box(box: Box) -> None:
    """A box in stored-pixel coordinates must have area and lie right and below the origin.
    Written as the condition that holds, so that NaN (every comparison false) fails it."""
    corners = (box.x0, box.y0, box.x1, box.y1)
    if not (
        all(math.isfinite(c) for c in corners) and 0 <= box.x0 < box.x1 and 0 <= box.y0 < box.y1
    ):
        raise InvalidRequest("a box needs 0 <= x0 < x1 and 0 <= y0 < y1, finite numbers")

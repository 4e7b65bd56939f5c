"""Writing a report version: the steps drafting, sign-off and amendment share.

Private to :mod:`report_drafts`. Versions are only ever inserted (:func:`new_version`), never
updated; a version that leaves RadDraft is built and registered for sending by
:func:`publish_version` in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_listener import Patient, Study, StudyVersion
from raddraft import atna
from raddraft.db import utcnow
from raddraft.settings import Settings
from report_drafts import audit, fhir_view, outbox
from report_drafts.content import Algorithm, ReportContent, Signer
from report_drafts.states import NotFound, ReportState, StaleVersion
from report_drafts.tables import (
    DEVICE_ACTOR,
    EditReason,
    Report,
    ReportVersion,
    Role,
    SentKind,
    User,
)
from report_drafts.version_reads import (
    algorithm_of,
    current_content,
    diff_stats,
    draft_run,
    study_uid,
    version,
)


def publish_version(
    session: Session,
    settings: Settings,
    report: Report,
    content: ReportContent,
    *,
    algorithm: Algorithm,
    previous_sr_uid: str | None,
    source_files: Mapping[str, Path] | None = None,
    **version_fields: Any,
) -> tuple[ReportVersion, outbox.BuiltDicom]:
    """Build the version's SR and GSPS, store the version, and register what it sends
    (``source_files``: local copies of source images, :func:`outbox.load_sources`)."""
    built = outbox.build_dicom(
        session,
        settings,
        report=report,
        content=content,
        algorithm=algorithm,
        previous_sr_uid=previous_sr_uid,
        source_files=source_files,
    )
    row = new_version(
        session,
        report,
        content=content,
        built=built,
        predecessor_sr_uid=previous_sr_uid,
        **version_fields,
    )
    outbox.register_outbound(
        session, settings, row, built, algorithm=algorithm, send=may_send(settings, algorithm)
    )
    return row, built


def withdraw_version(
    session: Session,
    settings: Settings,
    report: Report,
    *,
    state: ReportState,
    action: str,
    user: User | None,
    note: str,
    why: str,
) -> ReportVersion:
    """Store the version that ends an unsigned draft (rejected, superseded) and withdraw
    what was sent of it: an IOCM rejection note for its SR/GSPS, HL7 OBR-25 X / OBX-11 W, FHIR
    entered-in-error, registered and sent in order like any version (the newest message for
    each destination; nothing goes where nothing of the draft was delivered).
    """
    content = current_content(session, report)
    built = outbox.build_withdrawal_dicom(session, settings, report=report, reason=why)
    note_uids = [uid for kind, uid, _path in built.files if kind == SentKind.kos]
    row = new_version(
        session,
        report,
        content=content,
        state=state,
        action=action,
        user=user,
        note=note,
        rejection_note_uid=note_uids[0] if note_uids else None,
    )
    algorithm = algorithm_of(draft_run(session, report))
    outbox.register_outbound(
        session,
        settings,
        row,
        built,
        algorithm=algorithm,
        send=may_send(settings, algorithm),
        withdrawal=why,
    )
    return row


def audit_report(
    session: Session,
    action: str,
    *,
    report: Report,
    user: User | None = None,
    version: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """An audit event about ``report``, filed under its study; the ATNA copy on commit."""
    study = study_uid(session, report)
    audit.record(
        session,
        action,
        user=user,
        study_instance_uid=study,
        report_pk=report.id,
        version=version,
        detail=detail,
    )
    who = user.name if user else "raddraft"
    if not atna.enabled():
        return
    patient = _patient(session, report)
    if action == "view":
        xml = atna.instances_accessed(who, "", patient.patient_id, study)
        atna.emit_on_commit(session, xml)
    elif action in _ATNA_RECORD_ACTIONS:
        xml = atna.patient_record(
            user=who,
            patient_id=patient.patient_id,
            patient_name=patient.patient_name,
            study_uid=study,
            report_id=report.uid,
            version=version or report.current_version,
        )
        atna.emit_on_commit(session, xml)


def _patient(session: Session, report: Report) -> Patient:
    """The patient of the report's study (the ATNA records name them, PS3.15 A.5.3)."""
    study = session.get(Study, report.study_pk)
    assert study is not None
    return study.patient


# Report changes a hospital's audit repository hears of as Patient Record events (A.5.3.10).
_ATNA_RECORD_ACTIONS = frozenset(("sign", "amend", "reject"))


def report_for_version(session: Session, study_version_pk: int, *, lock: bool = False) -> Report:
    """The study version's report, created (``queued``) on first use; ``lock``: FOR UPDATE."""
    query = select(Report).where(Report.study_version_pk == study_version_pk)
    report = session.scalar(query.with_for_update() if lock else query)
    if report is not None:
        return report
    sv = session.get(StudyVersion, study_version_pk)
    if sv is None:
        raise NotFound(f"no study version {study_version_pk}")
    study = session.get(Study, sv.study_pk)
    assert study is not None

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


def start_review(report: Report, user: User) -> None:
    """A radiologist's first look starts the reader-study clock; a fresh draft is in review."""
    if report.first_opened_at is None and user.role == Role.radiologist:
        report.first_opened_at = utcnow()
        report.first_opened_by_pk = user.id
    if report.state == ReportState.drafted:
        report.state = ReportState.in_review
        report.updated_at = utcnow()


def signer_for(user: User, settings: Settings) -> Signer:
    """Who a signed version names: the radiologist and the institution (the SR's observer)."""
    return Signer(
        name=user.display_name or user.name,
        login=user.name,
        organization=settings.institution_name,
    )


def may_send(settings: Settings, algorithm: Algorithm) -> bool:
    """A random-weight demo model's text never reaches PACS or RIS unless explicitly allowed."""
    return not algorithm.demo or settings.allow_demo_export


def new_version(  # noqa: PLR0913 (one keyword per ReportVersion column)
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
    built: outbox.BuiltDicom | None = None,
    predecessor_sr_uid: str | None = None,
    extra_diff: dict[str, Any] | None = None,
    rejection_note_uid: str | None = None,
) -> ReportVersion:
    """Insert the next version and move the report head to it (never touches older rows),
    with what FHIR shows of the report (:func:`report_drafts.fhir_view.follow`)."""
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
        rejection_note_uid=rejection_note_uid,
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
    fhir_view.follow(session, report, row)
    session.flush()
    return row

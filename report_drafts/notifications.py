"""Critical findings: raise the study to STAT at once and notify on two channels.

When a stored version suspects a configured critical finding (:mod:`report_drafts.reconcile`,
``RADDRAFT_CRITICAL_FINDINGS``), :func:`raise_critical` puts the report (and so its jobs and the
worklist) at STAT, and :func:`notify_critical` writes one notice per configured channel into the
outbox, records it as a :class:`CriticalNotification` and enqueues a ``NotifyCritical`` job in
the same transaction: an HL7 v2.5.1 ORU^R01 (OBR-5 ``S``, OBX-8 ``AA``) for the critical-results
receiver (``RADDRAFT_CRITICAL_MLLP``) and an e-mail (``RADDRAFT_CRITICAL_SMTP``,
``RADDRAFT_CRITICAL_EMAIL_TO``). Every notice says it is an AI suspicion pending radiologist
review, never a diagnosis. The worker records the transport's reply (:func:`record_notification`:
HL7 MSA-1 AA, SMTP 250) as *delivered*, never as acknowledged; a failed attempt is retried by
the job runner. A notice is *acknowledged* only by a named radiologist or administrator
(:func:`acknowledge_notification`, audited); one delivered but not acknowledged within
``RADDRAFT_CRITICAL_ACK_TIMEOUT_MINUTES`` escalates by e-mail to the next of
``RADDRAFT_CRITICAL_ESCALATION_CONTACTS`` (:func:`escalate_unacknowledged`, called by the
router's periodic pass), again after each timeout until the list ends.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import uuid
from email.message import EmailMessage
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_listener import Patient, Study
from raddraft import job_contract, jobs
from raddraft.db import utcnow
from raddraft.settings import Settings
from report_drafts import audit
from report_drafts._version_writes import audit_report
from report_drafts.content import CRITICAL_NOTICE
from report_drafts.outbox import _write_once, hl7_message
from report_drafts.states import InvalidRequest, NotFound, PermissionDenied
from report_drafts.tables import (
    CriticalNotification,
    NotificationChannel,
    Report,
    ReportVersion,
    Role,
    SentState,
    User,
)
from report_drafts.version_reads import study_uid


def raise_critical(session: Session, report: Report, labels: list[str]) -> None:
    """Put a report suspecting a critical finding at STAT (worklist top, jobs first)."""
    if report.priority <= jobs.Priority.stat:
        return
    before = report.priority
    report.priority = jobs.Priority.stat
    report.updated_at = utcnow()
    audit_report(
        session,
        "priority",
        report=report,
        detail={"from": before, "to": int(jobs.Priority.stat), "why": "critical", "labels": labels},
    )


def _email(
    settings: Settings,
    study: Study,
    patient: Patient,
    labels: list[str],
    message_id: str,
    *,
    to: list[str] | None = None,
    escalation: int = 0,
) -> bytes:
    """The notice as an RFC 5322 message (plain text, UTF-8); ``escalation`` > 0 for the n-th
    escalation of a notice nobody acknowledged, to ``to``."""
    notice = CRITICAL_NOTICE.format(labels=", ".join(labels))
    message = EmailMessage()
    message["From"] = settings.critical_email_from
    message["To"] = ", ".join(to if to is not None else settings.critical_email_to)
    prefix = f"[RadDraft] ESCALATION {escalation}, not acknowledged: " if escalation else ""
    message["Subject"] = (
        f"{prefix or '[RadDraft] '}AI suspicion, pending review: {', '.join(labels)}"
        f" (accession {study.accession_number or 'none'})"
    )
    message["Message-ID"] = message_id
    message["Date"] = email.utils.format_datetime(utcnow())
    message.set_content(
        f"{notice}.\n\n"
        f"Patient ID: {patient.patient_id}\n"
        f"Accession: {study.accession_number or '(none)'}\n"
        f"Study Instance UID: {study.study_instance_uid}\n\n"
        "This message was sent by RadDraft, an AI drafting assistant. No radiologist has "
        "reviewed this draft yet; act on the radiologist's report, not on this notice.\n"
    )
    return bytes(message)


def notify_critical(
    session: Session,
    settings: Settings,
    report: Report,
    version: ReportVersion,
    labels: list[str],
    *,
    send: bool,
) -> list[CriticalNotification]:
    """One recorded notice (and job) per configured channel; ``held`` when ``send`` is off."""
    study = session.get(Study, report.study_pk)
    assert study is not None
    patient = session.get(Patient, study.patient_pk)
    assert patient is not None
    made: list[CriticalNotification] = []
    state = SentState.pending if send else SentState.held

    def record(
        channel: NotificationChannel, destination: str, identifier: str, relative: str
    ) -> None:
        row = CriticalNotification(
            report_pk=report.id,
            report_version_pk=version.id,
            channel=channel,
            destination=destination,
            identifier=identifier,
            path=relative,
            labels=list(labels),
            state=state,
        )
        session.add(row)
        session.flush()
        made.append(row)

    if settings.critical_mllp:
        control_id = "RC" + uuid.uuid4().hex[:18].upper()
        relative = f"critical/{control_id}.hl7"
        message = hl7_message(session, settings, version, control_id)
        _write_once(session, settings, relative, message.encode("utf-8"))
        record(NotificationChannel.hl7, settings.critical_mllp, control_id, relative)
    if settings.critical_smtp and settings.critical_email_to:
        message_id = email.utils.make_msgid("raddraft-critical")
        relative = f"critical/{uuid.uuid4().hex}.eml"
        body = _email(settings, study, patient, labels, message_id)
        _write_once(session, settings, relative, body)
        record(NotificationChannel.email, settings.critical_smtp, message_id, relative)
    for row in made:
        if send:
            job_contract.enqueue(
                session, job_contract.NotifyCritical(row.id), priority=jobs.Priority.stat
            )
    audit_report(
        session,
        "critical",
        report=report,
        version=version.number,
        detail={
            "labels": labels,
            "notifications": [{"channel": r.channel, "destination": r.destination} for r in made],
            "held": not send,
        },
    )
    return made


def notification(session: Session, notification_pk: int) -> CriticalNotification:
    """One notice, for the worker that sends it."""
    row = session.get(CriticalNotification, notification_pk)
    if row is None:
        raise NotFound(f"no critical notification {notification_pk}")
    return row


def record_notification(
    session: Session, notification_pk: int, *, ok: bool, ack: str | None = None, error: str = ""
) -> CriticalNotification:
    """Record one attempt: delivered (``ack``: the transport's reply, MSA-1 or SMTP's 250; no
    person has read it yet) or failed."""
    row = notification(session, notification_pk)
    row.attempts += 1
    if ok:
        row.state = SentState.sent
        row.sent_at = utcnow()
        row.ack = ack
        row.last_error = None
    else:
        row.state = SentState.failed
        row.last_error = (error or "failed")[:4000]
    report = session.get(Report, row.report_pk)
    audit.record(
        session,
        "notify",
        study_instance_uid=study_uid(session, report) if report else "",
        report_pk=row.report_pk,
        detail={
            "channel": row.channel,
            "destination": row.destination,
            "identifier": row.identifier,
            "ok": ok,
            "delivered": ok,
            "transport_reply": ack,
            "error": row.last_error,
        },
    )
    session.flush()
    return row


def acknowledge_notification(
    session: Session, notification_pk: int, user: User
) -> CriticalNotification:
    """A named radiologist or administrator acknowledges a critical notice: it and every other
    notice of the same report version (channels, escalations) stop escalating. Audited
    (``critical_acknowledged``: who, when). Refused to other roles; an acknowledged notice
    is not acknowledged again (InvalidRequest names who did)."""
    if user.role not in (Role.radiologist, Role.admin):
        raise PermissionDenied("only a radiologist or an administrator acknowledges a notice")
    row = notification(session, notification_pk)
    if row.acknowledged_at is not None:
        raise InvalidRequest(
            f"notice {notification_pk} was acknowledged by {row.acknowledged_by} at "
            f"{row.acknowledged_at.isoformat()}"
        )
    now = utcnow()
    siblings = session.scalars(
        select(CriticalNotification).where(
            CriticalNotification.report_version_pk == row.report_version_pk,
            CriticalNotification.acknowledged_at.is_(None),
        )
    )
    for notice in siblings:
        notice.acknowledged_at = now
        notice.acknowledged_by = user.name
    report = session.get(Report, row.report_pk)
    audit.record(
        session,
        "critical_acknowledged",
        user=user,
        study_instance_uid=study_uid(session, report) if report else "",
        report_pk=row.report_pk,
        detail={"notice": row.id, "labels": list(row.labels), "at": now.isoformat()},
    )
    session.flush()
    return row


def escalate_unacknowledged(
    session: Session, settings: Settings, *, now: dt.datetime | None = None, limit: int = 100
) -> list[CriticalNotification]:
    """Escalate notices delivered but not acknowledged within the timeout: an e-mail to the next
    escalation contact, recorded and sent like any notice (``escalation_of``), once per report
    version per timeout. Returns the escalation notices made (bounded by ``limit``)."""
    contacts = list(settings.critical_escalation_contacts)
    if not contacts or not settings.critical_smtp:
        return []
    now = now or utcnow()
    timeout = dt.timedelta(minutes=settings.critical_ack_timeout_minutes)
    candidates = session.scalars(
        select(CriticalNotification)
        .where(
            CriticalNotification.escalation_of.is_(None),
            CriticalNotification.acknowledged_at.is_(None),
            CriticalNotification.state == SentState.sent,
            CriticalNotification.escalation_level < len(contacts),
        )
        .order_by(CriticalNotification.id)
        .limit(limit)
    )
    made: list[CriticalNotification] = []
    seen: set[int] = set()
    for original in candidates:
        if original.report_version_pk in seen:
            continue  # one escalation per report version, whatever its channels
        seen.add(original.report_version_pk)
        since = original.escalated_at or original.sent_at
        if since is None or now - since < timeout:
            continue
        made.append(_escalate(session, settings, original, contacts, now))
    session.flush()
    return made


def _escalate(
    session: Session,
    settings: Settings,
    original: CriticalNotification,
    contacts: list[str],
    now: dt.datetime,
) -> CriticalNotification:
    report = session.get(Report, original.report_pk)
    assert report is not None
    study = session.get(Study, report.study_pk)
    assert study is not None
    patient = session.get(Patient, study.patient_pk)
    assert patient is not None
    level = original.escalation_level + 1
    contact = contacts[original.escalation_level]
    labels = list(original.labels)
    message_id = email.utils.make_msgid("raddraft-escalation")
    relative = f"critical/{uuid.uuid4().hex}.eml"
    body = _email(settings, study, patient, labels, message_id, to=[contact], escalation=level)
    _write_once(session, settings, relative, body)
    row = CriticalNotification(
        report_pk=original.report_pk,
        report_version_pk=original.report_version_pk,
        channel=NotificationChannel.email,
        destination=settings.critical_smtp,
        identifier=message_id,
        path=relative,
        labels=labels,
        state=SentState.pending,
        escalation_of=original.id,
    )
    session.add(row)
    session.flush()
    job_contract.enqueue(session, job_contract.NotifyCritical(row.id), priority=jobs.Priority.stat)
    original.escalation_level = level
    original.escalated_at = now
    audit_report(
        session,
        "critical_escalated",
        report=report,
        detail={"notice": original.id, "level": level, "to": contact, "escalation": row.id},
    )
    return row


def recent_notifications(session: Session, *, limit: int = 50) -> list[dict[str, Any]]:
    """The latest notices, newest first, for the queue page."""
    rows = session.scalars(
        select(CriticalNotification).order_by(CriticalNotification.id.desc()).limit(limit)
    )
    return [
        {
            "id": r.id,
            "report": r.report_pk,
            "channel": r.channel,
            "destination": r.destination,
            "identifier": r.identifier,
            "labels": list(r.labels),
            "state": r.state,
            "attempts": r.attempts,
            "ack": r.ack,
            "delivered": r.state == SentState.sent,
            "acknowledged_by": r.acknowledged_by,
            "acknowledged_at": r.acknowledged_at.isoformat() if r.acknowledged_at else None,
            "escalation_of": r.escalation_of,
            "escalation_level": r.escalation_level,
            "error": r.last_error,
            "created_at": r.created_at.isoformat(),
            "sent_at": r.sent_at.isoformat() if r.sent_at else None,
        }
        for r in rows
    ]

"""The draft lifecycle's tables: reports, their immutable versions, model runs, users, audit,
per-finding feedback and what was sent where.

A *report* is the mutable head (state, current version number) of one study version's reading.
Its *versions* are append-only: every draft, edit, signature, rejection and amendment inserts a
row and none is ever updated or deleted (an ORM guard here, and database triggers in migration
0002 so not even raw SQL can rewrite history).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import Mapped, Mapper, mapped_column, relationship

from raddraft.db import Base, utcnow
from report_drafts.states import ReportState


class Role(enum.StrEnum):
    reader = "reader"  # view only
    radiologist = "radiologist"  # edit and sign
    admin = "admin"  # requeue, force, configure; never sign
    sender = "sender"  # a modality or gateway storing instances by STOW-RS; reads nothing


class EditReason(enum.StrEnum):
    """What the radiologist says they changed at sign-off (the reader study's categories)."""

    none = "none"
    content = "content"
    style = "style"
    both = "both"


class SentKind(enum.StrEnum):
    sr = "sr"
    gsps = "gsps"
    fhir = "fhir"
    hl7 = "hl7"
    kos = "kos"  # an IHE IOCM rejection note (Key Object Selection) withdrawing SR/GSPS


class SentState(enum.StrEnum):
    pending = "pending"
    sending = "sending"  # claimed by a running job: the peer may have it (ordering waits)
    sent = "sent"
    failed = "failed"  # last attempt failed; the job may retry
    # Not sent on purpose: a demo model's draft without allow_demo_export, or an unsigned
    # draft under a release policy of "hold" (RADDRAFT_RELEASE_UNSIGNED_*).
    held = "held"
    # Never to be sent: a later version of the report has objects for this destination
    # (``replaced_by_version`` names it), or a withdrawal found nothing delivered to withdraw.
    obsolete = "obsolete"


DEVICE_ACTOR = "raddraft"  # the actor of versions written by the worker (the AI device)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # the login
    display_name: Mapped[str] = mapped_column(String(324), default="")  # DICOM PN Family^Given
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    password_hash: Mapped[str | None] = mapped_column(String(256), default=None)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Page sessions carry the generation they were issued in; raising it (sign-out, password
    # change, token rotation, disabling) ends every session issued before, on the server.
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")


class SignInFailure(Base):
    """One failed sign-in, kept for the sign-in limit's window (shared by every web process).

    ``subject`` says what was tried: ``name:<user name>`` for a password, ``token`` for an API
    token (a token names no account); ``address`` is the client's IP address.
    """

    __tablename__ = "sign_in_failures"
    __table_args__ = (Index("ix_sign_in_failures_subject", "subject", "address", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(80))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class DraftRun(Base):
    """How a draft was made: the model, the program, the stages' questions/answers/reasoning."""

    __tablename__ = "draft_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_version_pk: Mapped[int] = mapped_column(ForeignKey("study_versions.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(256))
    model_revision: Mapped[str] = mapped_column(String(128), default="")
    program_version: Mapped[str] = mapped_column(String(64), default="")
    demo: Mapped[bool] = mapped_column(default=False)
    stages: Mapped[list[Any]] = mapped_column(default=list)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prior: Mapped[dict[str, Any]] = mapped_column(default=dict)  # study uid used, or why none
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Report(Base):
    """The head of one study version's report: where it stands and which version is current."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)  # also the FHIR resource id
    study_version_pk: Mapped[int] = mapped_column(ForeignKey("study_versions.id"), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=ReportState.queued)
    priority: Mapped[int] = mapped_column(default=2)
    current_version: Mapped[int] = mapped_column(default=0)  # 0: no draft yet
    superseded_by_pk: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), default=None)
    failure: Mapped[str | None] = mapped_column(Text, default=None)
    first_opened_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    first_opened_by_pk: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    # The RIS cancelled the order (ORC-1 CA/OC): no signature; what was sent is to be withdrawn.
    order_cancelled_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # What FHIR shows of the report (report_drafts.fhir_view keeps both as versions are
    # written): the DiagnosticReport.status, None while nothing is shown; when the version
    # shown (published or withdrawing) was written.
    fhir_status: Mapped[str | None] = mapped_column(String(16), default=None)
    fhir_updated_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    versions: Mapped[list[ReportVersion]] = relationship(
        back_populates="report", order_by="ReportVersion.number"
    )

    __table_args__ = (
        Index("ix_reports_state_priority", "state", "priority", "created_at"),
        # FHIR search: a status's page in id order; _lastUpdated ranges (migration 0013).
        Index(
            "ix_reports_fhir_status",
            "fhir_status",
            "id",
            postgresql_where=text("fhir_status IS NOT NULL"),
            sqlite_where=text("fhir_status IS NOT NULL"),
        ),
        Index("ix_reports_fhir_updated", "fhir_updated_at"),
    )


class ReportVersion(Base):
    """One immutable version of a report: its content and the who/when/why of the change."""

    __tablename__ = "report_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_pk: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    number: Mapped[int] = mapped_column()
    content: Mapped[dict[str, Any]] = mapped_column()  # ReportContent.to_json()
    status: Mapped[str] = mapped_column(String(16))  # ReportStatus
    state: Mapped[str] = mapped_column(String(16))  # ReportState this version put the report in
    action: Mapped[str] = mapped_column(String(32))  # draft/edit/finding/sign/reject/amend/...
    actor: Mapped[str] = mapped_column(String(64))  # user name, or "raddraft" for the device
    user_pk: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    note: Mapped[str] = mapped_column(Text, default="")  # why, in the actor's words
    edit_reason: Mapped[str | None] = mapped_column(String(16), default=None)
    draft_run_pk: Mapped[int | None] = mapped_column(ForeignKey("draft_runs.id"), default=None)
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    gsps_sop_instance_uids: Mapped[list[Any]] = mapped_column(default=list)
    predecessor_sr_uid: Mapped[str | None] = mapped_column(String(64), default=None)
    # The IHE IOCM rejection note (KOS) a withdrawal version built: what it references is no
    # longer served by RadDraft's DICOMweb, the note is.
    rejection_note_uid: Mapped[str | None] = mapped_column(String(64), default=None)
    diff: Mapped[dict[str, Any]] = mapped_column(default=dict)  # change against the AI draft

    report: Mapped[Report] = relationship(back_populates="versions")

    __table_args__ = (UniqueConstraint("report_pk", "number"),)


class FindingFeedback(Base):
    """A radiologist's accept / reject / edit of one AI finding."""

    __tablename__ = "finding_feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_pk: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    version_number: Mapped[int] = mapped_column()  # the version this feedback produced
    tracking_uid: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # accept | reject | edit
    before: Mapped[dict[str, Any]] = mapped_column(default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(default=dict)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Who did what when: every view, edit, sign, export and message; queryable by study."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    user_pk: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    action: Mapped[str] = mapped_column(String(32))
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    report_pk: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), default=None)
    version: Mapped[int | None] = mapped_column(default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SentObject(Base):
    """One object for one destination: an SR, a GSPS, a FHIR resource or an HL7 message.

    The payload lies under ``data_dir/outbox/`` (``path``) and is never changed after it is
    written, so a retry sends exactly what was built at sign-off. ``identifier`` is what the
    receiver sees (SOP Instance UID, FHIR id, HL7 control id) and what ``raddraft trace`` looks up.
    """

    __tablename__ = "sent_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_version_pk: Mapped[int] = mapped_column(ForeignKey("report_versions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    identifier: Mapped[str] = mapped_column(String(128), index=True)
    destination: Mapped[str] = mapped_column(String(256))
    path: Mapped[str] = mapped_column(String(512))  # relative to data_dir/outbox
    state: Mapped[str] = mapped_column(String(16), default=SentState.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # The report version whose objects made this one obsolete (state ``obsolete``).
    replaced_by_version: Mapped[int | None] = mapped_column(default=None)
    # What the peer answered to the last attempt: MLLP ACK code and control ids, DICOM
    # status, HTTP status and ETag (also in the audit log, one event per attempt).
    response: Mapped[dict[str, Any]] = mapped_column(default=dict)

    # A FHIR DiagnosticReport keeps its id across versions (each version PUTs it again), so the
    # same identifier may appear once per report version.
    __table_args__ = (UniqueConstraint("report_version_pk", "kind", "identifier", "destination"),)


class OutboxPayload(Base):
    """The bytes of one outbox object, by its path relative to ``data_dir/outbox/``.

    Written in the transaction that registers the object, so a payload commits exactly with the
    version (or notice) that references it, and any process (a GPU worker on another machine,
    the io worker, the web app) materialises it into its own ``data_dir/outbox/`` from here: no
    process needs another's disk. Written once: a second insert of a path is refused.
    """

    __tablename__ = "outbox_payloads"

    path: Mapped[str] = mapped_column(String(512), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class NotificationChannel(enum.StrEnum):
    """How a critical-finding notice travels: an HL7 v2 message or an e-mail."""

    hl7 = "hl7"  # ORU^R01 over MLLP to the critical-results receiver; ACK MSA-1 AA = delivered
    email = "email"  # SMTP; the server's 250 after DATA = delivered (no person has read it)


class CriticalNotification(Base):
    """One notice of a suspected critical finding on one channel: recorded when the draft is
    stored, sent by a ``NotifyCritical`` job (``state`` sent = *delivered*: the transport's
    reply, in ``ack``), retried, and *acknowledged* only by a named person
    (``acknowledged_by``); one not acknowledged in time escalates to the next contact
    (``escalation_of`` names the notice an escalation is for)."""

    __tablename__ = "critical_notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_pk: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    report_version_pk: Mapped[int] = mapped_column(ForeignKey("report_versions.id"))
    channel: Mapped[str] = mapped_column(String(8))
    destination: Mapped[str] = mapped_column(String(256))
    identifier: Mapped[str] = mapped_column(String(128), index=True)  # MSH-10 or Message-ID
    path: Mapped[str] = mapped_column(String(512))  # the notice, relative to data_dir/outbox
    labels: Mapped[list[Any]] = mapped_column(default=list)
    state: Mapped[str] = mapped_column(String(16), default=SentState.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    ack: Mapped[str | None] = mapped_column(Text, default=None)  # transport reply: MSA-1 / 250
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(default=None)  # delivered
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64), default=None)  # user name
    escalation_level: Mapped[int] = mapped_column(default=0)  # escalations sent for it
    escalated_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    escalation_of: Mapped[int | None] = mapped_column(
        ForeignKey("critical_notifications.id"), default=None
    )


class ImmutableVersionError(RuntimeError):
    """Something tried to change or delete a stored report version."""


@event.listens_for(ReportVersion, "before_update")
def _refuse_update(_mapper: Mapper[Any], _connection: Any, target: ReportVersion) -> None:
    # Versions are the medico-legal record: a change is a new row, never an UPDATE.
    raise ImmutableVersionError(f"report version {target.id} is immutable")


@event.listens_for(ReportVersion, "before_delete")
def _refuse_delete(_mapper: Mapper[Any], _connection: Any, target: ReportVersion) -> None:
    raise ImmutableVersionError(f"report version {target.id} cannot be deleted")

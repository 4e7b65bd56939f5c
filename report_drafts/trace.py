"""Provenance: from any identifier a receiver saw back to the draft, the model and the signer.

An identifier is an SR, GSPS or rejection-note SOP Instance UID, an HL7 control id (MSH-10 of
a message RadDraft sent, or MSA-2 of the ACK the RIS answered), a FHIR ``Type/id`` or a
report's uid. Each version found lists what it sent where, and every attempt from the audit
log with the peer's answer: the MLLP ACK code and control ids, the DICOM status, the HTTP
status and ETag; an obsolete object names the version that replaced it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from dicom_listener import Instance, Study, StudyVersion
from report_drafts.content import ReportContent
from report_drafts.tables import AuditEvent, DraftRun, Report, ReportVersion, SentObject


@dataclass
class TraceResult:
    identifier: str
    matched: str  # what the id is: study, accession, image, sr, gsps, kos, hl7, ack, fhir, report
    report_id: int
    version: int
    status: str
    state: str
    actor: str
    at: str
    signer: dict[str, Any] | None
    model: str
    model_revision: str
    program_version: str
    demo: bool
    prior: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)  # stage, question, answer, seconds
    sent: list[dict[str, Any]] = field(default_factory=list)
    # every attempt and obsolescence from the audit log: at, identifier, ok, response, error
    attempts: list[dict[str, Any]] = field(default_factory=list)


SEND_ACTIONS = ("message", "export", "obsolete")


def _version_row(session: Session, event: AuditEvent) -> ReportVersion | None:
    return session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_pk == event.report_pk, ReportVersion.number == event.version
        )
    )


def _attempts(session: Session, row: ReportVersion) -> list[dict[str, Any]]:
    """The version's sends, ACKs and obsolescences from the audit log, oldest first."""
    events = session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.report_pk == row.report_pk,
            AuditEvent.version == row.number,
            AuditEvent.action.in_(SEND_ACTIONS),
        )
        .order_by(AuditEvent.at, AuditEvent.id)
    )
    return [
        {
            "at": e.at.isoformat(),
            "action": e.action,
            "kind": e.detail.get("kind"),
            "identifier": e.detail.get("identifier"),
            "destination": e.detail.get("destination"),
            "ok": e.detail.get("ok"),
            "response": e.detail.get("response") or {},
            "error": e.detail.get("error") or e.detail.get("why"),
        }
        for e in events
    ]


def _scanned_versions(session: Session, identifier: str) -> list[tuple[str, ReportVersion]]:
    """Versions found only by scanning: a GSPS UID (a JSON list on the version) or an ACK's
    own control id (its MSH-10, kept only in the audit log's copy of the answer)."""
    found: list[tuple[str, ReportVersion]] = []
    for row in session.scalars(
        select(ReportVersion).where(ReportVersion.sr_sop_instance_uid.is_not(None))
    ):
        if identifier in (row.gsps_sop_instance_uids or []):
            found.append(("gsps", row))
    for event in session.scalars(
        select(AuditEvent).where(
            AuditEvent.action.in_(SEND_ACTIONS), AuditEvent.report_pk.is_not(None)
        )
    ):
        response = (event.detail or {}).get("response") or {}
        acked = (
            _version_row(session, event) if response.get("ack_control_id") == identifier else None
        )
        if identifier and acked is not None:
            found.append(("ack", acked))
    return found


class _Found:
    """Report versions found so far, each once, in the order found, with the kind of id."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.rows: list[tuple[str, ReportVersion]] = []
        self.seen: set[int] = set()

    def add(self, kind: str, row: ReportVersion | None) -> None:
        if row is not None and row.id not in self.seen:
            self.seen.add(row.id)
            self.rows.append((kind, row))

    def add_current(self, kind: str, reports: Iterable[Report]) -> None:
        """The current version of each report (a study or an image names the report, not one
        version of it); reports without a draft yet have none."""
        for report in reports:
            if report.current_version > 0:
                self.add(
                    kind,
                    self.session.scalar(
                        select(ReportVersion).where(
                            ReportVersion.report_pk == report.id,
                            ReportVersion.number == report.current_version,
                        )
                    ),
                )


FHIR_KINDS = ("DiagnosticReport", "ImagingStudy", "Provenance", "Device", "Practitioner")


def _sent(found: _Found, identifier: str) -> None:
    """SR and GSPS SOP Instance UIDs, HL7 control ids (MSH-10) and FHIR ids (``Kind/id`` or the
    bare id of any resource RadDraft sent)."""
    session = found.session
    for row in session.scalars(
        select(ReportVersion).where(ReportVersion.sr_sop_instance_uid == identifier)
    ):
        found.add("sr", row)
    bare = identifier.split("/", 1)[-1]
    for sent in session.scalars(
        select(SentObject).where(
            or_(
                SentObject.identifier == identifier,
                # ``Kind/id`` of each kind RadDraft sends (outbox.fhir_resources): an equality
                # the identifier index answers, not a suffix match that reads every send.
                and_(
                    SentObject.kind == "fhir",
                    SentObject.identifier.in_([f"{kind}/{bare}" for kind in FHIR_KINDS]),
                ),
            )
        )
    ):
        found.add(sent.kind, session.get(ReportVersion, sent.report_version_pk))
    report = session.scalar(select(Report).where(Report.uid == bare))
    if report is not None:
        for row in report.versions:
            found.add("report", row)


def _received(found: _Found, identifier: str) -> None:
    """A Study Instance UID, an accession number, or the SOP Instance UID of a received image:
    the reports of that study (for an image, of the study versions that hold it)."""
    session = found.session
    studies = session.scalars(
        select(Study.id).where(
            or_(Study.study_instance_uid == identifier, Study.accession_number == identifier)
        )
    ).all()
    for study_pk in studies:
        study = session.get(Study, study_pk)
        kind = "study" if study and study.study_instance_uid == identifier else "accession"
        found.add_current(kind, _reports(session, Report.study_pk == study_pk))
    image = session.scalar(select(Instance).where(Instance.sop_instance_uid == identifier))
    if image is not None:
        received_in = session.get(StudyVersion, image.version_pk)
        assert received_in is not None
        holding = select(StudyVersion.id).where(
            StudyVersion.study_pk == received_in.study_pk,
            StudyVersion.number >= received_in.number,
        )
        found.add_current("image", _reports(session, Report.study_version_pk.in_(holding)))


def _reports(session: Session, where: ColumnElement[bool]) -> list[Report]:
    return list(
        session.scalars(
            select(Report)
            .join(StudyVersion, StudyVersion.id == Report.study_version_pk)
            .where(where)
            .order_by(StudyVersion.number)
        )
    )


def find_versions(session: Session, identifier: str) -> list[tuple[str, ReportVersion]]:
    """Every report version ``identifier`` names, with what kind of identifier it is.

    Any id a user has: a Study Instance UID or accession number (``study`` / ``accession``: each
    of the study's reports, current version), the SOP Instance UID of a received image
    (``image``) or of a sent SR, GSPS or rejection note (``sr`` / ``gsps`` / ``kos``), a FHIR id
    (``fhir``), an HL7 control id of a message (``hl7``) or of its ACK (``ack``), or a report's own
    uid (``report``).
    """
    identifier = identifier.strip()
    found = _Found(session)
    if not identifier:
        return []
    _sent(found, identifier)
    _received(found, identifier)
    if not found.rows:
        for kind, row in _scanned_versions(session, identifier):
            found.add(kind, row)
    return found.rows


def trace(session: Session, identifier: str) -> list[TraceResult]:
    """The provenance of every version ``identifier`` names (empty when unknown)."""
    results = []
    for kind, row in find_versions(session, identifier):
        report = session.get(Report, row.report_pk)
        assert report is not None
        first = session.scalar(
            select(ReportVersion).where(
                ReportVersion.report_pk == report.id, ReportVersion.number == 1
            )
        )
        run = session.get(DraftRun, first.draft_run_pk) if first and first.draft_run_pk else None
        content = ReportContent.from_json(row.content)
        sent = session.scalars(select(SentObject).where(SentObject.report_version_pk == row.id))
        results.append(
            TraceResult(
                identifier=identifier,
                matched=kind,
                report_id=report.id,
                version=row.number,
                status=row.status,
                state=row.state,
                actor=row.actor,
                at=row.created_at.isoformat(),
                signer=(
                    {
                        "name": content.signer.name,
                        "login": content.signer.login,
                        "organization": content.signer.organization,
                    }
                    if content.signer
                    else None
                ),
                model=run.model_id if run else "",
                model_revision=run.model_revision if run else "",
                program_version=run.program_version if run else "",
                demo=run.demo if run else False,
                prior=run.prior if run else {},
                stages=[
                    {k: s.get(k) for k in ("stage", "question", "answer", "seconds")}
                    for s in (run.stages if run else [])
                    if isinstance(s, dict)
                ],
                sent=[
                    {
                        "kind": s.kind,
                        "identifier": s.identifier,
                        "destination": s.destination,
                        "state": s.state,
                        "attempts": s.attempts,
                        "sent_at": s.sent_at.isoformat() if s.sent_at else None,
                        "replaced_by_version": s.replaced_by_version,
                        "response": s.response or {},
                        "note": s.last_error,
                    }
                    for s in sent
                ],
                attempts=_attempts(session, row),
            )
        )
    return results

"""What a RIS order does to the drafts of its study: priority up, or cancelled.

Called by the worker's ``ApplyOrder`` job and by the processor when it drafts (the order may
come before or after the images). A STAT order raises the reports (worklist top, and the jobs
they enqueue from then on). A cancelled order (ORC-1 CA/OC) stops what has not been drafted
yet, refuses a later signature, marks each report ``order_cancelled_at`` with an audit event
``order_cancelled``, and withdraws an unsigned draft like a rejection
(:func:`report_drafts._version_writes.withdraw_version`: IOCM rejection note, HL7 X/W, FHIR
entered-in-error, wherever the draft reached). A signed report is left to its radiologist:
only an amendment changes what was signed.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_listener import Study
from raddraft.db import utcnow
from raddraft.settings import Settings, get_settings
from report_drafts._version_writes import audit_report, report_for_version, withdraw_version
from report_drafts.states import EDITABLE, PRE_DRAFT, ReportState, check_transition
from report_drafts.tables import Report

ORDER_CANCELLED = "order cancelled by the RIS"


def reports_for_accession(session: Session, accession: str) -> list[Report]:
    """The reports of every study with this accession number, oldest first."""
    if not accession:
        return []
    return list(
        session.scalars(
            select(Report)
            .join(Study, Study.id == Report.study_pk)
            .where(Study.accession_number == accession)
            .order_by(Report.id)
        )
    )


def raise_priority(session: Session, report: Report, priority: int, *, why: str) -> bool:
    """Raise (never lower) a report's priority; True when it changed."""
    if priority >= report.priority:
        return False
    before = report.priority
    report.priority = priority
    report.updated_at = utcnow()
    audit_report(
        session, "priority", report=report, detail={"from": before, "to": priority, "why": why}
    )
    return True


def cancel_for_order(
    session: Session, report: Report, *, control: str, settings: Settings | None = None
) -> None:
    """Mark a report whose order was cancelled: one not drafted yet stops there, an unsigned
    draft is withdrawn from wherever it was sent."""
    if report.order_cancelled_at is not None:
        return
    report.order_cancelled_at = utcnow()
    report.updated_at = utcnow()
    why = f"{ORDER_CANCELLED} (ORC-1 {control})"
    if report.state in PRE_DRAFT:
        check_transition(report.state, ReportState.failed, "order cancelled")
        report.state = ReportState.failed
        report.failure = why
    elif report.state in EDITABLE:
        check_transition(report.state, ReportState.rejected, "order cancelled")
        withdraw_version(
            session,
            settings or get_settings(),
            report,
            state=ReportState.rejected,
            action="order_cancelled",
            user=None,
            note=why,
            why=f"AI draft withdrawn: {why}",
        )
    audit_report(
        session,
        "order_cancelled",
        report=report,
        version=report.current_version or None,
        detail={"order_control": control, "state": report.state, "withdraw": True},
    )


def apply_order(
    session: Session, accession: str, *, priority: int, cancelled: bool, control: str
) -> list[int]:
    """Apply an order to every report of its accession; the ids of the reports touched."""
    touched: list[int] = []
    for report in reports_for_accession(session, accession):
        if report.state == ReportState.superseded:
            continue
        if cancelled:
            cancel_for_order(session, report, control=control)
            touched.append(report.id)
        elif raise_priority(session, report, priority, why="order"):
            touched.append(report.id)
    session.flush()
    return touched


def order_for_draft(
    session: Session,
    study_version_pk: int,
    *,
    priority: int | None,
    cancelled: bool,
    control: str = "",
) -> bool:
    """Apply a study's order when its version is drafted; False when drafting must stop."""
    report = report_for_version(session, study_version_pk, lock=True)
    if cancelled:
        cancel_for_order(session, report, control=control or "CA")
        return False
    if priority is not None:
        raise_priority(session, report, priority, why="order")
    return True

"""Plain JSON views of reports and versions, shared by the API routes and (later) the pages."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, literal, select, tuple_
from sqlalchemy.orm import Session

import orders
import report_drafts as drafts
from dicom_listener import (
    IdentityConflict,
    Instance,
    Patient,
    Study,
    StudyVersion,
    identity_conflict,
    open_identity_conflicts,
)
from raddraft.db import iso
from report_drafts import (
    DEMO_WARNING,
    DRAFT_WARNING,
    SIGNED_STATES,
    AuditEvent,
    DraftRun,
    InvalidRequest,
    Report,
    ReportContent,
    ReportState,
    ReportVersion,
    SentObject,
)


def version_json(row: ReportVersion) -> dict[str, Any]:
    return {
        "number": row.number,
        "status": row.status,
        "state": row.state,
        "action": row.action,
        "actor": row.actor,
        "at": iso(row.created_at),
        "note": row.note,
        "edit_reason": row.edit_reason,
        "sr_sop_instance_uid": row.sr_sop_instance_uid,
        "gsps_sop_instance_uids": list(row.gsps_sop_instance_uids or []),
        "predecessor_sr_uid": row.predecessor_sr_uid,
        "diff": row.diff,
        "content": row.content,
    }


def run_json(run: DraftRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "model": run.model_id,
        "model_revision": run.model_revision,
        "program_version": run.program_version,
        "demo": run.demo,
        "stages": run.stages,
        "settings": run.settings,
        "prior": run.prior,
        "timings": run.timings,
        "at": iso(run.created_at),
    }


def sent_json(row: SentObject) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "identifier": row.identifier,
        "destination": row.destination,
        "state": row.state,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "sent_at": iso(row.sent_at),
    }


def audit_json(row: AuditEvent) -> dict[str, Any]:
    return {
        "at": iso(row.at),
        "actor": row.actor,
        "action": row.action,
        "study_instance_uid": row.study_instance_uid,
        "report_id": row.report_pk,
        "version": row.version,
        "detail": row.detail,
    }


@dataclass(frozen=True)
class StudyRow:
    report: Report
    version: StudyVersion
    study: Study
    patient: Patient


def conflict_json(conflict: IdentityConflict) -> dict[str, Any]:
    """A study's patient identity conflict: the header's demographics and the held ones."""
    return {
        "id": conflict.id,
        "study_pk": conflict.study_pk,
        "received": {
            "patient_name": conflict.received_name,
            "patient_birth_date": conflict.received_birth_date,
            "patient_sex": conflict.received_sex,
        },
        "held": {
            "patient_name": conflict.held_name,
            "patient_birth_date": conflict.held_birth_date,
            "patient_sex": conflict.held_sex,
        },
        "detected_at": iso(conflict.detected_at),
        "resolved_at": iso(conflict.resolved_at),
        "resolved_by": conflict.resolved_by,
        "resolution": conflict.resolution,
    }


def open_conflicts(session: Session) -> list[IdentityConflict]:
    return open_identity_conflicts(session)


def _identity(session: Session, study: Study) -> dict[str, Any]:
    """The study's identity conflict, if any, for a summary; while unresolved the summary
    shows the study's own header's demographics, not the held patient's."""
    conflict = identity_conflict(session, study.id)
    if conflict is None:
        return {"identity_conflict": None}
    shown: dict[str, Any] = {"identity_conflict": conflict_json(conflict)}
    if conflict.resolved_at is None:
        shown.update(conflict_json(conflict)["received"])
    return shown


def study_row(session: Session, report: Report) -> StudyRow:
    sv = session.get(StudyVersion, report.study_version_pk)
    study = session.get(Study, report.study_pk)
    assert sv is not None and study is not None
    patient = session.get(Patient, study.patient_pk)
    assert patient is not None
    return StudyRow(report, sv, study, patient)


def summary_json(row: StudyRow, content: ReportContent | None) -> dict[str, Any]:
    report, study, patient = row.report, row.study, row.patient
    return {
        "id": report.id,
        "uid": report.uid,
        "state": report.state,
        "priority": report.priority,
        "current_version": report.current_version,
        "study_version_pk": report.study_version_pk,
        "study_version": row.version.number,
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_description": study.study_description,
        "indication": study.indication,
        "patient_id": patient.patient_id,
        "patient_name": patient.patient_name,
        "patient_birth_date": patient.birth_date,
        "patient_sex": patient.sex,
        "completed_at": iso(row.version.completed_at),
        "created_at": iso(report.created_at),
        "updated_at": iso(report.updated_at),
        "superseded_by": report.superseded_by_pk,
        "failure": report.failure,
        "findings": [
            {"label": f.label, "accepted": f.accepted, "laterality": f.laterality}
            for f in (content.findings if content else ())
        ],
        # The critical findings this version suspects (the site's list, read with negation).
        "critical": list(content.critical) if content else [],
    }


#: A count beyond this is given as "at least": counting every report in five years of a
#: hospital's archive per request is what made the worklist slow (issue #23).
COUNT_LIMIT = 1000


def _filters(
    query: Select[Any],
    *,
    states: list[str] | None = None,
    priority: int | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    patient_id: str | None = None,
    accession: str | None = None,
) -> Select[Any]:
    """The worklist's filters; the study and patient are joined only when a filter needs them
    (the page itself joins them anyway, for its 50 rows)."""
    if states:
        query = query.where(Report.state.in_(states))
    else:
        query = query.where(Report.state != ReportState.superseded)
    if priority is not None:
        query = query.where(Report.priority == priority)
    # DICOM DA (YYYYMMDD) sorts as text; accept ISO dates too.
    if date_from:
        query = query.where(Study.study_date >= date_from.replace("-", ""))
    if date_to:
        query = query.where(Study.study_date <= date_to.replace("-", ""))
    if patient_id:
        query = query.where(Patient.patient_id == patient_id)
    if accession:
        query = query.where(Study.accession_number == accession)
    return query


def worklist_query(**filters: Any) -> Select[Any]:
    query: Select[Any] = (
        select(Report, StudyVersion, Study, Patient)  # type: ignore[assignment]
        .join(StudyVersion, StudyVersion.id == Report.study_version_pk)
        .join(Study, Study.id == Report.study_pk)
        .join(Patient, Patient.id == Study.patient_pk)
    )
    return _filters(query, **filters)


def _count_query(**filters: Any) -> Select[Any]:
    """At most COUNT_LIMIT + 1 matching report ids, joined only as the filters need."""
    query: Select[Any] = select(Report.id)
    if filters.get("date_from") or filters.get("date_to") or filters.get("accession"):
        query = query.join(Study, Study.id == Report.study_pk)
    if filters.get("patient_id"):
        if not (filters.get("date_from") or filters.get("date_to") or filters.get("accession")):
            query = query.join(Study, Study.id == Report.study_pk)
        query = query.join(Patient, Patient.id == Study.patient_pk)
    return _filters(query, **filters).limit(COUNT_LIMIT + 1)


def encode_cursor(report: Report) -> str:
    """Where the next page starts: the last row's sort key (priority, created, id)."""
    key = [report.priority, report.created_at.isoformat(), report.id]
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, dt.datetime, int]:
    """The sort key a cursor names; anything else is refused (400), never guessed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        priority, created, report_id = json.loads(raw)
        when = dt.datetime.fromisoformat(created)
        if (
            not isinstance(priority, int)
            or not isinstance(report_id, int)
            or isinstance(priority, bool)
            or isinstance(report_id, bool)
            or when.tzinfo is None
        ):
            raise ValueError(cursor)
    except (ValueError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequest("the worklist cursor is not one this server gave") from error
    return priority, when, report_id


def worklist(
    session: Session,
    *,
    page: int = 1,
    page_size: int,
    cursor: str | None = None,
    **filters: Any,
) -> dict[str, Any]:
    """One page of reports, most urgent first, then oldest (waiting longest) first.

    Keyset paging: the order is the report's (priority, created, id), which one index serves
    (``ix_reports_worklist``), and ``cursor`` (from ``next_cursor``) says where the page starts,
    so page 2,000 costs what page 1 does. ``page`` (an offset) still works for old links. The
    total is counted up to COUNT_LIMIT; ``total_capped`` says when there are more.
    """
    query = worklist_query(**filters)
    found = session.scalar(select(func.count()).select_from(_count_query(**filters).subquery()))
    total = min(int(found or 0), COUNT_LIMIT)
    order = (Report.priority, Report.created_at, Report.id)
    if cursor:
        priority, created, report_id = decode_cursor(cursor)
        after = (literal(priority), literal(created, Report.created_at.type), literal(report_id))
        query = query.where(tuple_(*order) > tuple_(*after))
    else:
        query = query.offset((page - 1) * page_size)
    rows = session.execute(query.order_by(*order).limit(page_size + 1)).all()
    more = len(rows) > page_size
    rows = rows[:page_size]
    contents = _current_contents(session, [r for r, *_ in rows])
    items = [
        {
            **summary_json(StudyRow(report, sv, study, patient), contents.get(report.id)),
            **_identity(session, study),
        }
        for report, sv, study, patient in rows
    ]
    return {
        "total": total,
        "total_capped": int(found or 0) > COUNT_LIMIT,
        "page": page,
        "page_size": page_size,
        "items": items,
        "next_cursor": encode_cursor(rows[-1][0]) if more and rows else None,
    }


def _current_contents(session: Session, reports: list[Report]) -> dict[int, ReportContent]:
    """The head versions' content of a page's reports, in one query."""
    wanted = [(r.id, r.current_version) for r in reports if r.current_version > 0]
    if not wanted:
        return {}
    rows = session.execute(
        select(ReportVersion.report_pk, ReportVersion.content).where(
            tuple_(ReportVersion.report_pk, ReportVersion.number).in_(wanted)
        )
    )
    return {pk: ReportContent.from_json(content) for pk, content in rows}


def detail(session: Session, report: Report) -> dict[str, Any]:
    """Everything a reviewer needs: text, findings, stages, prior, versions, provenance."""
    row = study_row(session, report)
    rows = list(
        session.scalars(
            select(ReportVersion)
            .where(ReportVersion.report_pk == report.id)
            .order_by(ReportVersion.number)
        )
    )
    current = rows[-1] if rows else None
    content = ReportContent.from_json(current.content) if current else None
    run = drafts.draft_run(session, report)
    sent = session.scalars(
        select(SentObject)
        .where(SentObject.report_version_pk.in_([v.id for v in rows]))
        .order_by(SentObject.id)
    )
    warnings = []
    if run is not None and run.demo:
        warnings.append(DEMO_WARNING)
    if report.state not in SIGNED_STATES:
        warnings.append(DRAFT_WARNING)
    by_version = {v.id: v.number for v in rows}
    order = orders.order_for_accession(session, row.study.accession_number)
    return {
        **summary_json(row, content),
        **_identity(session, row.study),
        "order_cancelled_at": iso(report.order_cancelled_at),
        "order": order_json(order),
        "warnings": warnings,
        "first_opened_at": iso(report.first_opened_at),
        "content": current.content if current else None,
        "version": version_json(current) if current else None,
        "versions": [{k: v for k, v in version_json(v).items() if k != "content"} for v in rows],
        "provenance": run_json(run),
        "prior": run.prior if run else None,
        "images": images_json(session, report),
        "sent": [{**sent_json(s), "version": by_version[s.report_version_pk]} for s in sent],
    }


def order_json(order: orders.OrderInfo | None) -> dict[str, Any] | None:
    """The RIS's order for the study, as received (indication, priority, ordering provider)."""
    if order is None:
        return None
    return {
        "accession_number": order.accession_number,
        "indication": order.indication,
        "priority": order.priority,
        "cancelled": order.cancelled,
        "ordering_provider": order.ordering_provider,
    }


def images_json(session: Session, report: Report) -> list[dict[str, Any]]:
    return [
        {
            "sop_instance_uid": inst.sop_instance_uid,
            "view_position": inst.view_position,
            "rows": inst.rows,
            "columns": inst.columns,
            "photometric_interpretation": inst.photometric_interpretation,
            "png": f"/api/reports/{report.id}/images/{inst.sop_instance_uid}.png",
        }
        for inst in drafts.source_instances(session, report)
    ]


def instance_of(session: Session, report: Report, sop_instance_uid: str) -> Instance | None:
    for inst in drafts.source_instances(session, report):
        if inst.sop_instance_uid == sop_instance_uid:
            return inst
    return None

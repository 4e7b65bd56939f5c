"""FHIR R4B read and search at ``/fhir/``: DiagnosticReport, ImagingStudy, Provenance.

A DiagnosticReport shows a report's latest *published* version (the AI draft, the signature,
each amendment), never a half-edited review state: the RIS sees what it was also sent. A
withdrawn draft (rejected, superseded) reads as ``entered-in-error``, as it was pushed.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

import report_drafts as drafts
from dicom_listener import Patient, Study
from report_drafts import NotFound, Report, ReportVersion, capability_statement
from web.api.auth import DbSession, Viewer

router = APIRouter(prefix="/fhir", tags=["fhir"])

FHIR_JSON = "application/fhir+json"
PUBLISHED_ACTIONS = ("draft", "sign", "amend", "correct")
#: Versions that withdraw an unsigned draft, and how the withdrawal says so.
WITHDRAWN_BY = {"reject": "AI draft rejected", "supersede": "AI draft superseded"}


def _json(resource: Any, status: int = 200) -> Response:
    return Response(resource.model_dump_json(), status_code=status, media_type=FHIR_JSON)


def _dict(resource: Any) -> dict[str, Any]:
    return json.loads(resource.model_dump_json())


def published_version(session: Session, report: Report) -> ReportVersion | None:
    return session.scalar(
        select(ReportVersion)
        .where(ReportVersion.report_pk == report.id, ReportVersion.action.in_(PUBLISHED_ACTIONS))
        .order_by(ReportVersion.number.desc())
        .limit(1)
    )


def _resources(request: Request, session: Session, report: Report) -> dict[str, Any]:
    row = published_version(session, report)
    if row is None:
        raise NotFound(f"report {report.uid} has no published version")
    settings = request.app.state.settings
    resources = drafts.fhir_resources(session, settings, row)
    withdrawn = withdrawal_version(session, report)
    if withdrawn is not None:
        # What was pushed last: the withdrawal (entered-in-error), never the draft it withdrew.
        why = f"{WITHDRAWN_BY[withdrawn.action]}: {withdrawn.note}"
        resources["DiagnosticReport"] = drafts.fhir_resources(
            session, settings, withdrawn, withdrawal=why
        )["DiagnosticReport"]
    return resources


def withdrawal_version(session: Session, report: Report) -> ReportVersion | None:
    """The version that withdrew the report's draft (rejected, superseded), if any."""
    return session.scalar(
        select(ReportVersion)
        .where(ReportVersion.report_pk == report.id, ReportVersion.action.in_(WITHDRAWN_BY))
        .order_by(ReportVersion.number)
        .limit(1)
    )


def _bundle(entries: list[dict[str, Any]], base: str) -> Response:
    from fhir.resources.R4B.bundle import Bundle

    bundle = Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "entry": [
                {
                    "fullUrl": f"{base}{e['resourceType']}/{e['id']}",
                    "resource": e,
                    "search": {"mode": "match"},
                }
                for e in entries
            ],
        }
    )
    return _json(bundle)


@router.get("/metadata")
def metadata(request: Request) -> Response:
    """The CapabilityStatement (no authentication, as FHIR clients expect)."""
    return _json(
        capability_statement(
            software_version=_program_version(), base_url=str(request.base_url) + "fhir"
        )
    )


def _program_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("raddraft")
    except PackageNotFoundError:
        return "0"


@router.get("/DiagnosticReport/{resource_id}")
def read_report(resource_id: str, request: Request, session: DbSession, user: Viewer) -> Response:
    report = session.scalar(select(Report).where(Report.uid == resource_id))
    if report is None:
        raise NotFound(f"no DiagnosticReport {resource_id}")
    return _json(_resources(request, session, report)["DiagnosticReport"])


def _reference_value(value: str) -> str:
    """``Patient/123`` or ``123``; ``urn:oid:1.2`` or ``1.2`` -> the bare value."""
    value = value.split("|")[-1]
    for prefix in ("Patient/", "ImagingStudy/", "urn:oid:"):
        value = value.removeprefix(prefix)
    return value


def _date_filter(query: Any, dates: list[str]) -> Any:
    """FHIR date search on the study date: eq (default), ge, gt, le, lt; YYYY-MM-DD."""
    for item in dates:
        prefix, value = (
            (item[:2], item[2:])
            if item[:2] in ("eq", "ge", "gt", "le", "lt")
            else (
                "eq",
                item,
            )
        )
        da = value.replace("-", "")[:8]
        column = Study.study_date
        query = query.where(
            {
                "eq": column == da,
                "ge": column >= da,
                "gt": column > da,
                "le": column <= da,
                "lt": column < da,
            }[prefix]
        )
    return query


@router.get("/DiagnosticReport")
def search_reports(
    request: Request,
    session: DbSession,
    user: Viewer,
    patient: str | None = None,
    study: str | None = None,
    status: str | None = None,
    date: Annotated[list[str] | None, Query()] = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=500)] = 100,
) -> Response:
    """Search by patient (id), study (StudyInstanceUID or ImagingStudy id), status, date."""
    query = (
        select(Report)
        .join(Study, Study.id == Report.study_pk)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(Report.current_version > 0)
        .order_by(Report.id)
    )
    if patient:
        query = query.where(Patient.patient_id == _reference_value(patient))
    if study:
        query = query.where(Study.study_instance_uid == _reference_value(study))
    if date:
        query = _date_filter(query, date)
    entries = []
    for report in session.scalars(query):
        resource = _dict(_resources(request, session, report)["DiagnosticReport"])
        if status and resource.get("status") not in status.split(","):
            continue
        entries.append(resource)
        if len(entries) >= count:
            break
    return _bundle(entries, str(request.base_url) + "fhir/")


@router.get("/ImagingStudy/{resource_id}")
def read_study(resource_id: str, request: Request, session: DbSession, user: Viewer) -> Response:
    report = _latest_report_of_study(session, resource_id)
    return _json(_resources(request, session, report)["ImagingStudy"])


def _latest_report_of_study(session: Session, study_uid: str) -> Report:
    report = session.scalar(
        select(Report)
        .join(Study, Study.id == Report.study_pk)
        .where(Study.study_instance_uid == study_uid, Report.current_version > 0)
        .order_by(Report.id.desc())
        .limit(1)
    )
    if report is None:
        raise NotFound(f"no ImagingStudy {study_uid}")
    return report


@router.get("/ImagingStudy")
def search_studies(
    request: Request,
    session: DbSession,
    user: Viewer,
    patient: str | None = None,
    identifier: str | None = None,
) -> Response:
    query = (
        select(Study.study_instance_uid)
        .join(Patient, Patient.id == Study.patient_pk)
        .join(Report, Report.study_pk == Study.id)
        .where(Report.current_version > 0)
        .distinct()
    )
    if patient:
        query = query.where(Patient.patient_id == _reference_value(patient))
    if identifier:
        query = query.where(Study.study_instance_uid == _reference_value(identifier))
    entries = [
        _dict(_resources(request, session, _latest_report_of_study(session, uid))["ImagingStudy"])
        for uid in session.scalars(query)
    ]
    return _bundle(entries, str(request.base_url) + "fhir/")


@router.get("/Provenance/{resource_id}")
def read_provenance(
    resource_id: str, request: Request, session: DbSession, user: Viewer
) -> Response:
    """``<report uid>-v<n>``: who made version n (the AI device) and who verified it."""
    uid, _, number = resource_id.rpartition("-v")
    report = session.scalar(select(Report).where(Report.uid == uid))
    if report is None or not number.isdigit():
        raise NotFound(f"no Provenance {resource_id}")
    row = session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_pk == report.id, ReportVersion.number == int(number)
        )
    )
    if row is None or row.action not in PUBLISHED_ACTIONS:
        raise NotFound(f"no Provenance {resource_id}")
    return _json(drafts.fhir_resources(session, request.app.state.settings, row)["Provenance"])

"""The review API: worklist, detail, edits, per-finding feedback, sign, reject, amend, admin.

Every change names the version it was made against (``expected_version``); the lifecycle refuses
stale or replayed requests with 409. There is deliberately no route that sets a report's state:
states move only as a consequence of the actions below.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

import report_drafts as drafts
from raddraft import jobs
from raddraft.settings import Settings
from report_drafts import Box, NotFound, ReportContent
from web.api import views
from web.api.auth import Admin, CurrentUser, DbSession, Radiologist, Viewer
from web.api.params import QueryNumber, RowId, VersionNumber

router = APIRouter(prefix="/api")


class _Body(BaseModel):
    # Unknown fields are refused (422): a client cannot smuggle a "state" or "status" in.
    model_config = ConfigDict(extra="forbid")


#: A report section's length at most (characters): a long chest X-ray report is a few thousand.
TEXT_MAX = 20_000
#: A reason or note.
NOTE_MAX = 4_000
Text = Annotated[str | None, Field(max_length=TEXT_MAX)]


class EditBody(_Body):
    expected_version: int = Field(description="The version the edit was made against.")
    findings_text: Text = None
    impression: Text = None
    progression: Text = None
    note: str = Field(default="", max_length=NOTE_MAX)


#: A coordinate: JSON as Python reads it admits NaN and Infinity, which no box has.
Coordinate = Annotated[float, Field(allow_inf_nan=False)]


class BoxBody(_Body):
    x0: Coordinate
    y0: Coordinate
    x1: Coordinate
    y1: Coordinate


class FindingBody(_Body):
    expected_version: int
    action: Literal["accept", "reject", "edit"]
    label: str | None = Field(default=None, max_length=200)
    box: BoxBody | None = None


class NewFindingBody(_Body):
    expected_version: int
    label: str = Field(
        max_length=200, description="The finding the model missed, e.g. 'Pneumothorax'."
    )
    sop_instance_uid: str | None = Field(
        default=None, max_length=64, description="The image the box is on."
    )
    box: BoxBody | None = Field(default=None, description="Stored pixels (column, row).")
    laterality: Literal["left", "right", "bilateral"] | None = None


class SignBody(_Body):
    expected_version: int = Field(description="The version on screen; a stale one gets 409.")
    edit_reason: Literal["none", "content", "style", "both"]


class RejectBody(_Body):
    expected_version: int
    reason: str = Field(max_length=NOTE_MAX)


class ResolveIdentityBody(_Body):
    resolution: str = Field(min_length=1, max_length=4000)


class AmendBody(_Body):
    expected_version: int
    reason: str = Field(max_length=NOTE_MAX)
    findings_text: Text = None
    impression: Text = None
    progression: Text = None
    corrected: bool = Field(
        default=False, description="An error put right (HL7 C, FHIR corrected)."
    )


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _changed(session: DbSession, report_id: int, row: Any) -> dict[str, Any]:
    session.commit()
    return {"report_id": report_id, "version": views.version_json(row)}


@router.get("/me", tags=["auth"])
def me(user: CurrentUser) -> dict[str, Any]:
    return {"name": user.name, "display_name": user.display_name, "role": user.role}


@router.get("/worklist", tags=["review"])
def worklist(  # noqa: PLR0913 (FastAPI: one parameter per worklist query key)
    session: DbSession,
    user: Viewer,
    state: Annotated[list[str] | None, Query()] = None,
    priority: QueryNumber = None,
    date_from: str | None = Query(default=None, description="Study date, YYYYMMDD or ISO."),
    date_to: str | None = None,
    patient_id: str | None = None,
    accession: str | None = None,
    page: Annotated[int, Query(ge=1, le=100)] = 1,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the page before.")
    ] = None,
) -> dict[str, Any]:
    """Reports by priority then age; superseded ones only when asked for by state. Page on
    with ``cursor`` (each page's ``next_cursor``); ``total`` counts up to 1,000
    (``total_capped``)."""
    return views.worklist(
        session,
        page=page,
        page_size=page_size,
        cursor=cursor,
        states=state,
        priority=priority,
        date_from=date_from,
        date_to=date_to,
        patient_id=patient_id,
        accession=accession,
    )


@router.get("/reports/{report_id}", tags=["review"])
def report_detail(report_id: RowId, session: DbSession, user: Viewer) -> dict[str, Any]:
    """The draft with stages, findings, versions and provenance; a radiologist's first view
    starts the review (and the reader-study clock)."""
    report = drafts.open_report(session, report_id, user)
    result = views.detail(session, report)
    session.commit()
    return result


@router.get("/reports/{report_id}/versions/{number}", tags=["review"])
def report_version(
    report_id: RowId, number: VersionNumber, session: DbSession, user: Viewer
) -> dict[str, Any]:
    return views.version_json(drafts.version(session, report_id, number))


@router.post("/reports/{report_id}/edit", tags=["review"])
def edit(report_id: RowId, body: EditBody, session: DbSession, user: Radiologist) -> dict[str, Any]:
    row = drafts.edit_text(
        session,
        report_id,
        user,
        expected_version=body.expected_version,
        findings_text=body.findings_text,
        impression=body.impression,
        progression=body.progression,
        note=body.note,
    )
    return _changed(session, report_id, row)


@router.post("/reports/{report_id}/findings", tags=["review"])
def add_finding(
    report_id: RowId, body: NewFindingBody, session: DbSession, user: Radiologist
) -> dict[str, Any]:
    """Add a finding the model missed, with a box drawn on the page (counted per label)."""
    row = drafts.add_finding(
        session,
        report_id,
        user,
        expected_version=body.expected_version,
        label=body.label,
        sop_instance_uid=body.sop_instance_uid,
        box=Box(**body.box.model_dump()) if body.box else None,
        laterality=body.laterality,
    )
    return _changed(session, report_id, row)


@router.post("/reports/{report_id}/findings/{tracking_uid}", tags=["review"])
def finding(
    report_id: RowId, tracking_uid: str, body: FindingBody, session: DbSession, user: Radiologist
) -> dict[str, Any]:
    row = drafts.finding_feedback(
        session,
        report_id,
        user,
        expected_version=body.expected_version,
        tracking_uid=tracking_uid,
        action=body.action,
        label=body.label,
        box=Box(**body.box.model_dump()) if body.box else None,
    )
    return _changed(session, report_id, row)


@router.post("/reports/{report_id}/sign", tags=["review"])
def sign(
    report_id: RowId, body: SignBody, request: Request, session: DbSession, user: Radiologist
) -> dict[str, Any]:
    """Sign as the authenticated radiologist: final SR and GSPS built, exports enqueued."""
    row = drafts.sign(
        session,
        report_id,
        user,
        expected_version=body.expected_version,
        edit_reason=body.edit_reason,
        settings=_settings(request),
    )
    return _changed(session, report_id, row)


@router.post("/reports/{report_id}/reject", tags=["review"])
def reject(
    report_id: RowId, body: RejectBody, request: Request, session: DbSession, user: Radiologist
) -> dict[str, Any]:
    """Reject the draft; what was sent of it is withdrawn (IOCM note, HL7 X/W, FHIR)."""
    row = drafts.reject(
        session,
        report_id,
        user,
        expected_version=body.expected_version,
        reason=body.reason,
        settings=_settings(request),
    )
    return _changed(session, report_id, row)


@router.post("/reports/{report_id}/amend", tags=["review"])
def amend(
    report_id: RowId, body: AmendBody, request: Request, session: DbSession, user: Radiologist
) -> dict[str, Any]:
    row = drafts.amend(
        session,
        report_id,
        user,
        expected_version=body.expected_version,
        reason=body.reason,
        findings_text=body.findings_text,
        impression=body.impression,
        progression=body.progression,
        corrected=body.corrected,
        settings=_settings(request),
    )
    return _changed(session, report_id, row)


@router.get("/reports/{report_id}/sent", tags=["review"])
def sent(report_id: RowId, session: DbSession, user: Viewer) -> list[dict[str, Any]]:
    """What was sent where, per version."""
    sends: list[dict[str, Any]] = views.detail(session, drafts.get_report(session, report_id))[
        "sent"
    ]
    return sends


@router.get("/reports/{report_id}/images", tags=["images"])
def images(report_id: RowId, session: DbSession, user: Viewer) -> list[dict[str, Any]]:
    return views.images_json(session, drafts.get_report(session, report_id))


@router.get(
    "/reports/{report_id}/images/{sop_instance_uid}.png",
    tags=["images"],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def image_png(  # noqa: PLR0913 (FastAPI: one parameter per rendering query key)
    report_id: RowId,
    sop_instance_uid: str,
    request: Request,
    session: DbSession,
    user: Viewer,
    boxes: bool = True,
    rejected: bool = False,
    version: QueryNumber = None,
    window_center: float | None = None,
    window_width: float | None = None,
    max_size: Annotated[int | None, Query(ge=16, le=8192)] = None,
) -> Response:
    """The archived image, windowed (given window, the image's own, or percentiles), with the
    boxes of the report's findings (current version unless ``version``) in stored pixels."""
    report = drafts.get_report(session, report_id)
    instance = views.instance_of(session, report, sop_instance_uid)
    if instance is None:
        raise NotFound(f"image {sop_instance_uid} is not part of report {report_id}")
    findings: tuple[Any, ...] = ()
    if boxes and report.current_version > 0:
        row = drafts.version(session, report.id, version or report.current_version)
        content = ReportContent.from_json(row.content)
        findings = tuple(f for f in content.findings if f.sop_instance_uid == sop_instance_uid)
    png = drafts.render_png(
        _settings(request).archive_dir / instance.path,
        findings=findings,
        show_rejected=rejected,
        window_center=window_center,
        window_width=window_width,
        max_size=max_size,
    )
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


@router.get("/studies/{study_instance_uid}/audit", tags=["audit"])
def study_audit(study_instance_uid: str, session: DbSession, user: Viewer) -> list[dict[str, Any]]:
    """Every view, edit, sign, export and message about the study, oldest first."""
    return [views.audit_json(e) for e in drafts.audit_for_study(session, study_instance_uid)]


@router.get("/figures", tags=["audit"])
def reader_figures(session: DbSession, user: Viewer) -> dict[str, Any]:
    """Share signed with no edit, edit reasons, median time to sign, per-finding feedback."""
    return drafts.reader_figures(session).to_json()


@router.get("/trace/{identifier:path}", tags=["audit"])
def trace(identifier: str, session: DbSession, user: Viewer) -> list[dict[str, Any]]:
    """From an SR/GSPS UID, FHIR id or HL7 control id to the version, model and signer."""
    found = drafts.trace(session, identifier)
    if not found:
        raise NotFound(f"nothing RadDraft sent is called {identifier!r}")
    from dataclasses import asdict

    return [asdict(t) for t in found]


# -- administration -------------------------------------------------------------------------


@router.get("/admin/jobs", tags=["admin"])
def list_jobs(
    session: DbSession,
    user: Admin,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    query = select(jobs.Job).order_by(jobs.Job.id.desc()).limit(limit)
    if state:
        query = query.where(jobs.Job.state == state)
    return [
        {
            "id": j.id,
            "key": j.key,
            "task": j.task,
            "queue": j.queue,
            "state": j.state,
            "priority": j.priority,
            "attempts": j.attempts,
            "args": j.args,
            "last_error": j.last_error,
        }
        for j in session.scalars(query)
    ]


@router.post("/admin/jobs/{job_id}/retry", tags=["admin"])
def retry_job(job_id: RowId, session: DbSession, user: Admin) -> dict[str, Any]:
    job = drafts.retry_job(session, job_id, user)
    session.commit()
    return {"id": job.id, "state": job.state}


@router.post("/admin/study-versions/{study_version_pk}/requeue", tags=["admin"])
def requeue(study_version_pk: RowId, session: DbSession, user: Admin) -> dict[str, Any]:
    """Draft a failed study version again (refused once a draft exists)."""
    job = drafts.requeue(session, study_version_pk, user)
    session.commit()
    return {"job": job.id, "key": job.key, "state": job.state}


@router.post("/admin/studies/{study_instance_uid}/force-complete", tags=["admin"])
def force_complete(
    study_instance_uid: str, request: Request, session: DbSession, user: Admin
) -> dict[str, Any]:
    """Close the study's open version now instead of waiting for the quiet period.

    The listener does the completion (eligibility, one draft job per version) in its own
    transaction; this route only authorises and audits it.
    """
    import dicom_listener

    try:
        done = dicom_listener.complete_study(study_instance_uid, settings=_settings(request))
    except LookupError as error:
        raise NotFound(str(error)) from error
    completed = [
        {
            "study_version_pk": c.study_version_pk,
            "number": c.number,
            "eligible": c.eligible,
            "ineligible_reason": c.ineligible_reason,
            "job_key": c.job_key,
        }
        for c in done
    ]
    drafts.record_audit(
        session,
        "force_complete",
        user=user,
        study_instance_uid=study_instance_uid,
        detail={"completed": completed},
    )
    session.commit()
    return {"study_instance_uid": study_instance_uid, "completed": completed}


@router.get("/admin/identity-conflicts", tags=["admin"])
def identity_conflicts(session: DbSession, user: Admin) -> list[dict[str, Any]]:
    """Studies whose header disagrees with the patient held under the same Patient ID and
    Issuer (PS3.3 C.7.1.1), unresolved, oldest first (at most 100)."""
    return [views.conflict_json(c) for c in views.open_conflicts(session)]


@router.post("/admin/identity-conflicts/{conflict_id}/resolve", tags=["admin"])
def resolve_identity_conflict(
    conflict_id: RowId, body: ResolveIdentityBody, session: DbSession, user: Admin
) -> dict[str, Any]:
    """Resolve a study's identity conflict (audited); its held RIS messages are released."""
    result = drafts.resolve_identity(session, conflict_id, user, resolution=body.resolution)
    session.commit()
    return result


@router.post("/critical-notifications/{notification_id}/acknowledge", tags=["review"])
def acknowledge_critical(
    notification_id: RowId, session: DbSession, user: CurrentUser
) -> dict[str, Any]:
    """A named radiologist or administrator acknowledges a critical-finding notice (audited);
    the transport's reply only ever made it *delivered*. Stops its escalation."""
    row = drafts.acknowledge_notification(session, notification_id, user)
    session.commit()
    return {
        "id": row.id,
        "acknowledged_by": row.acknowledged_by,
        "acknowledged_at": row.acknowledged_at.isoformat() if row.acknowledged_at else None,
    }

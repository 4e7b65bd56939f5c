"""The DiagnosticReport of a report version (FHIR R4B DiagnosticReport,
https://hl7.org/fhir/R4B/diagnosticreport.html), its status mapping, and parsing it back.

Status preliminary (AI draft), final (signed), amended / corrected (after signing); category
HL7 v2-0074 RAD + LOINC LP29684-5 Radiology; code LOINC 36643-5 "XR Chest 2 Views" (the usual
PA + lateral study; pass ``code`` for other views); the study linked by ``imagingStudy`` (R4
name; R5 calls it ``study``) with identifier ``urn:dicom:uid`` / ``urn:oid:<StudyInstanceUID>``;
the full text, warnings included, as a text/plain presentedForm. ``resultsInterpreter`` allows
Practitioner / Organization only and is set for signed versions only: the AI is recorded as
author by a Provenance (:mod:`.fhir_provenance`). fhir.resources checks neither code values nor
reference targets: statuses and signers are checked here.

A version suspecting a critical finding carries ``meta.tag`` v3-ObservationInterpretation
``AA`` "Critical abnormal" (DiagnosticReport has no ``interpretation``; its Observations would)
and RadDraft's tag ``ai-critical-suspicion`` while unsigned, and names the findings in
``conclusionCode`` text; the conclusion says it is an AI suspicion pending review.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from report_drafts.builders._fhir import (
    DICOM_UID_SYSTEM,
    LOINC,
    V2_0074,
    PatientRef,
    accession_identifier,
    check_id,
    instant,
    parse_resource,
    patient_reference,
    practitioner_reference,
    study_identifier,
)
from report_drafts.content import ReportContent, ReportStatus
from report_drafts.text_safety import safe_content

#: LOINC 36643-5 "XR Chest 2 Views" (PA and lateral), the default report code.
CHEST_XRAY_2_VIEWS = ("36643-5", "XR Chest 2 Views")

#: The status of a withdrawn draft (R4B diagnostic-report-status "entered-in-error": "The
#: report has been withdrawn following a previous final release. This electronic record should
#: never have existed, though it is possible that real-world decisions were based on it.").
#: Not "cancelled", which says the examination was never done or not completed.
WITHDRAWN_STATUS = "entered-in-error"

V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
RADDRAFT_FLAGS = "urn:raddraft:flag"


def critical_tags(content: ReportContent) -> list[dict[str, str]]:
    """``meta.tag`` codings of a version suspecting a critical finding (none otherwise)."""
    if not content.critical:
        return []
    tags = [{"system": V3_INTERPRETATION, "code": "AA", "display": "Critical abnormal"}]
    if not content.status.is_signed:
        tags.append(
            {
                "system": RADDRAFT_FLAGS,
                "code": "ai-critical-suspicion",
                "display": "AI suspicion of a critical finding, pending radiologist review",
            }
        )
    return tags


#: DiagnosticReport.status values RadDraft writes (R4B value set diagnostic-report-status).
REPORT_STATUSES = frozenset({*(s.value for s in ReportStatus), WITHDRAWN_STATUS})


def report_status(status: ReportStatus | str) -> str:
    """The DiagnosticReport.status for a report status; anything else is refused."""
    if status == WITHDRAWN_STATUS:
        return WITHDRAWN_STATUS
    try:
        return ReportStatus(status).value
    except ValueError:
        raise ValueError(
            f"invalid DiagnosticReport status {status!r}: one of {sorted(REPORT_STATUSES)}"
        ) from None


def diagnostic_report(  # noqa: PLR0913 (one keyword per DiagnosticReport element)
    content: ReportContent,
    *,
    resource_id: str,
    patient: PatientRef,
    study_instance_uid: str,
    issued: dt.datetime,
    demo: bool,
    effective: dt.datetime | None = None,
    imaging_study_id: str | None = None,
    accession: str | None = None,
    sr_sop_instance_uid: str | None = None,
    code: tuple[str, str] = CHEST_XRAY_2_VIEWS,
    withdrawal: str | None = None,
) -> DiagnosticReport:
    """The DiagnosticReport of one report version.

    ``issued`` is when this version was made, ``effective`` the study time (both timezone
    aware). ``imaging_study_id`` adds a literal ``ImagingStudy/<id>`` reference next to the
    DICOM study identifier; ``sr_sop_instance_uid`` records the SR as an identifier.
    ``withdrawal`` (why, in words) withdraws an unsigned draft: status entered-in-error, the
    reason first in the conclusion.
    """
    status = report_status(content.status)
    content.check_consistent()
    # FHIR strings admit no control character but TAB, CR and LF (R4B datatypes, "string").
    content = safe_content(content)
    warnings = content.warnings(demo=demo)
    if withdrawal is not None:
        if content.status.is_signed:
            raise ValueError("only an unsigned draft is withdrawn; a signed report is amended")
        status = WITHDRAWN_STATUS
        warnings = (f"WITHDRAWN: {withdrawal}", *warnings)
    conclusion = "\n\n".join(
        [content.impression.strip(), *content.review_notes(), *warnings]
    ).strip()
    study_ref: dict[str, Any] = {
        "type": "ImagingStudy",
        "identifier": study_identifier(study_instance_uid),
    }
    if imaging_study_id is not None:
        study_ref["reference"] = f"ImagingStudy/{check_id(imaging_study_id)}"
    identifiers, based_on = _identifiers(sr_sop_instance_uid, accession)
    data: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": check_id(resource_id),
        "status": status,
        "category": [
            {
                "coding": [
                    {"system": V2_0074, "code": "RAD", "display": "Radiology"},
                    {"system": LOINC, "code": "LP29684-5", "display": "Radiology"},
                ]
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": code[0], "display": code[1]}],
            "text": code[1],
        },
        "subject": patient_reference(patient),
        "imagingStudy": [study_ref],
        "issued": instant(issued, "issued"),
        "conclusion": conclusion,
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "language": "en",
                "title": "Chest radiograph report" + (" (AI draft)" if warnings else ""),
                "data": base64.b64encode(content.text(demo=demo).encode()).decode("ascii"),
            }
        ],
    }
    if identifiers:
        data["identifier"] = identifiers
    if based_on:
        data["basedOn"] = based_on
    if content.critical:
        data["meta"] = {"tag": critical_tags(content)}
        data["conclusionCode"] = [{"text": label} for label in content.critical]
    if effective is not None:
        data["effectiveDateTime"] = instant(effective, "effective")
    if content.status.is_signed:
        assert content.signer is not None
        data["resultsInterpreter"] = [practitioner_reference(content.signer)]
    return DiagnosticReport.model_validate(data)


def _identifiers(
    sr_sop_instance_uid: str | None, accession: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The report's identifiers (its SR, the accession) and what it is based on: the RIS's
    order, by its accession number (an identifier reference: RadDraft serves no
    ServiceRequest), so ``DiagnosticReport?based-on=`` finds the report of an order."""
    identifiers: list[dict[str, Any]] = []
    if sr_sop_instance_uid:
        identifiers.append({"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{sr_sop_instance_uid}"})
    if not accession:
        return identifiers, []
    identifiers.append(accession_identifier(accession))
    return identifiers, [{"type": "ServiceRequest", "identifier": accession_identifier(accession)}]


def parse_diagnostic_report(data: str | bytes | Mapping[str, Any]) -> DiagnosticReport:
    """A DiagnosticReport parsed back, its status checked like when built."""
    resource = parse_resource(data)
    if not isinstance(resource, DiagnosticReport):
        raise ValueError(f"expected a DiagnosticReport, got {resource.__resource_type__}")
    report_status(resource.status or "")
    return resource


def presented_text(report: DiagnosticReport) -> str:
    """The text/plain presentedForm of a report, decoded."""
    for form in report.presentedForm or ():
        if (form.contentType or "").startswith("text/plain") and form.data:
            # fhir.resources holds base64Binary decoded (bytes); a str would still be encoded
            data = form.data
            raw = data if isinstance(data, bytes) else base64.b64decode(data)
            return raw.decode("utf-8")
    raise ValueError("the report has no text/plain presentedForm")

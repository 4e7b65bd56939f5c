"""FHIR R4B resources for the RIS: DiagnosticReport, ImagingStudy, Provenance, Device,
Practitioner and the server's CapabilityStatement (``fhir.resources.R4B``, FHIR 4.3.0).

- DiagnosticReport (R4B 10.3): status preliminary (AI draft), final (signed), amended /
  corrected (after signing); category HL7 v2-0074 RAD + LOINC LP29684-5 Radiology; code LOINC
  36643-5 "XR Chest 2 Views" (the usual PA + lateral study; pass ``code`` for other views);
  the study linked by ``imagingStudy`` (R4 name; R5 calls it ``study``) with identifier
  ``urn:dicom:uid`` / ``urn:oid:<StudyInstanceUID>``; the full text, warnings included, as a
  text/plain presentedForm. ``resultsInterpreter`` allows Practitioner / Organization only and is
  set for signed versions only: the AI is recorded as author by a Provenance.
- fhir.resources checks neither code values nor reference targets: statuses and signers are
  checked here.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.resource import Resource
from pydicom import Dataset

from report_drafts.content import DEMO_WARNING, Algorithm, ReportContent, ReportStatus, Signer

FHIR_VERSION = "4.3.0"
DICOM_UID_SYSTEM = "urn:dicom:uid"
LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
#: Identifier system of RadDraft user logins (the signing radiologists).
USER_SYSTEM = "urn:raddraft:user"

#: LOINC 36643-5 "XR Chest 2 Views" (PA and lateral), the default report code.
CHEST_XRAY_2_VIEWS = ("36643-5", "XR Chest 2 Views")

#: DiagnosticReport.status values RadDraft writes (R4B value set diagnostic-report-status).
REPORT_STATUSES = frozenset(s.value for s in ReportStatus)

_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class PatientRef:
    """How a report names its patient: an identifier (PatientID with its issuer system)."""

    id: str
    system: str = "urn:raddraft:patient-id"
    name: str | None = None  # display, e.g. "DOE^JOHN" rendered by the caller


@dataclass(frozen=True)
class ImageRef:
    """One image of a study, as ImagingStudy lists it (plain values from the archive)."""

    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    series_number: int | None = None
    instance_number: int | None = None
    series_description: str | None = None


def image_refs(datasets: Sequence[Dataset]) -> list[ImageRef]:
    """ImageRefs read from image headers."""

    def number(value: Any) -> int | None:
        return int(value) if value not in (None, "") else None

    return [
        ImageRef(
            series_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            modality=str(ds.get("Modality", "OT")),
            series_number=number(ds.get("SeriesNumber")),
            instance_number=number(ds.get("InstanceNumber")),
            series_description=ds.get("SeriesDescription") or None,
        )
        for ds in datasets
    ]


def check_id(value: str) -> str:
    """Refuse a value that is not a FHIR resource id (R4B 2.24.0.1: [A-Za-z0-9-.]{1,64})."""
    if not _ID_RE.match(value):
        raise ValueError(f"not a FHIR id: {value!r}")
    return value


def resource_id_for(text: str) -> str:
    """A FHIR id made from free text (a login, a UID): other characters become '-'."""
    return check_id(re.sub(r"[^A-Za-z0-9\-.]", "-", text)[:64] or "x")


def report_status(status: ReportStatus | str) -> str:
    """The DiagnosticReport.status for a report status; anything else is refused."""
    try:
        return ReportStatus(status).value
    except ValueError:
        raise ValueError(
            f"invalid DiagnosticReport status {status!r}: one of {sorted(REPORT_STATUSES)}"
        ) from None


def _instant(value: dt.datetime, what: str) -> str:
    if value.tzinfo is None:
        raise ValueError(f"{what} needs a timezone (FHIR instant/dateTime with time)")
    return value.isoformat()


def _study_identifier(study_instance_uid: str) -> dict[str, str]:
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_instance_uid}"}


def _patient_reference(patient: PatientRef) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "type": "Patient",
        "identifier": {"system": patient.system, "value": patient.id},
    }
    if patient.name:
        ref["display"] = patient.name
    return ref


def practitioner_reference(signer: Signer) -> dict[str, Any]:
    """Reference to the signer's Practitioner (id from the login, see :func:`practitioner`)."""
    return {
        "reference": f"Practitioner/{resource_id_for(signer.login)}",
        "type": "Practitioner",
        "identifier": {"system": USER_SYSTEM, "value": signer.login},
        "display": signer.name.replace("^", " ").strip(),
    }


def practitioner(signer: Signer) -> Practitioner:
    """The signing radiologist (R4B Practitioner), id derived from the login."""
    family, _, given = signer.name.partition("^")
    name: dict[str, Any] = {"text": signer.name.replace("^", " ").strip()}
    if family:
        name["family"] = family
    if given:
        name["given"] = [g for g in given.split("^") if g][:1] or [given]
    return Practitioner.model_validate(
        {
            "resourceType": "Practitioner",
            "id": resource_id_for(signer.login),
            "identifier": [{"system": USER_SYSTEM, "value": signer.login}],
            "name": [name],
        }
    )


def diagnostic_report(
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
) -> DiagnosticReport:
    """The DiagnosticReport of one report version.

    ``issued`` is when this version was made, ``effective`` the study time (both timezone
    aware). ``imaging_study_id`` adds a literal ``ImagingStudy/<id>`` reference next to the
    DICOM study identifier; ``sr_sop_instance_uid`` records the SR as an identifier.
    """
    status = report_status(content.status)
    content.check_consistent()
    warnings = content.warnings(demo=demo)
    conclusion = "\n\n".join([content.impression.strip(), *warnings]).strip()
    study_ref: dict[str, Any] = {
        "type": "ImagingStudy",
        "identifier": _study_identifier(study_instance_uid),
    }
    if imaging_study_id is not None:
        study_ref["reference"] = f"ImagingStudy/{check_id(imaging_study_id)}"
    identifiers = []
    if sr_sop_instance_uid:
        identifiers.append({"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{sr_sop_instance_uid}"})
    if accession:
        identifiers.append(_accession_identifier(accession))
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
        "subject": _patient_reference(patient),
        "imagingStudy": [study_ref],
        "issued": _instant(issued, "issued"),
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
    if effective is not None:
        data["effectiveDateTime"] = _instant(effective, "effective")
    if content.status.is_signed:
        assert content.signer is not None
        data["resultsInterpreter"] = [practitioner_reference(content.signer)]
    return DiagnosticReport.model_validate(data)


def _accession_identifier(accession: str) -> dict[str, Any]:
    return {
        "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
        "value": accession,
    }


def imaging_study(
    *,
    resource_id: str,
    study_instance_uid: str,
    patient: PatientRef,
    images: Sequence[ImageRef] = (),
    accession: str | None = None,
    started: dt.datetime | None = None,
    description: str | None = None,
    status: str = "available",
) -> ImagingStudy:
    """The ImagingStudy (R4B 4.6) of a study: DICOM UID identifier, series and instances."""
    if status not in {"registered", "available", "cancelled", "entered-in-error", "unknown"}:
        raise ValueError(f"invalid ImagingStudy status {status!r}")
    series: dict[str, dict[str, Any]] = {}
    for image in images:
        entry = series.setdefault(
            image.series_uid,
            {
                "uid": image.series_uid,
                "modality": {"system": DCM, "code": image.modality},
                "instance": [],
            },
        )
        if image.series_number is not None:
            entry["number"] = image.series_number
        if image.series_description:
            entry["description"] = image.series_description
        instance: dict[str, Any] = {
            "uid": image.sop_instance_uid,
            "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{image.sop_class_uid}"},
        }
        if image.instance_number is not None:
            instance["number"] = image.instance_number
        entry["instance"].append(instance)
    for entry in series.values():
        entry["numberOfInstances"] = len(entry["instance"])
    identifiers: list[dict[str, Any]] = [_study_identifier(study_instance_uid)]
    if accession:
        identifiers.append(_accession_identifier(accession))
    data: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": check_id(resource_id),
        "identifier": identifiers,
        "status": status,
        "subject": _patient_reference(patient),
    }
    if series:
        data["series"] = list(series.values())
        data["numberOfSeries"] = len(series)
        data["numberOfInstances"] = len(images)
        modalities = sorted({image.modality for image in images})
        data["modality"] = [{"system": DCM, "code": m} for m in modalities]
    if started is not None:
        data["started"] = _instant(started, "started")
    if description:
        data["description"] = description
    return ImagingStudy.model_validate(data)


def device(algorithm: Algorithm, *, resource_id: str, device_uid: str) -> Device:
    """The AI model as a Device: the same UID as the SR's Device Observer UID (TID 1004)."""
    data: dict[str, Any] = {
        "resourceType": "Device",
        "id": check_id(resource_id),
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{device_uid}"}],
        "manufacturer": "RadDraft",
        "deviceName": [{"name": algorithm.name, "type": "model-name"}],
        "version": [{"value": algorithm.version}],
        "status": "active",
    }
    if algorithm.demo:
        data["note"] = [{"text": DEMO_WARNING}]
    return Device.model_validate(data)


def provenance(
    *,
    resource_id: str,
    targets: Sequence[str],
    recorded: dt.datetime,
    algorithm: Algorithm,
    device_id: str,
    signer: Signer | None = None,
) -> Provenance:
    """Who made a report version (R4B 6.3): the AI device as author, the radiologist as
    verifier once signed. ``targets`` are literal references, e.g. ``DiagnosticReport/42``."""
    if not targets:
        raise ValueError("a Provenance needs at least one target")

    def agent(code: str, display: str, who: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": code, "display": display}]},
            "who": who,
        }

    agents = [
        agent(
            "author",
            "Author",
            {
                "reference": f"Device/{check_id(device_id)}",
                "type": "Device",
                "display": f"{algorithm.name} {algorithm.version} (RadDraft "
                f"{algorithm.program_version})",
            },
        )
    ]
    if signer is not None:
        agents.append(agent("verifier", "Verifier", practitioner_reference(signer)))
    return Provenance.model_validate(
        {
            "resourceType": "Provenance",
            "id": check_id(resource_id),
            "target": [{"reference": t} for t in targets],
            "recorded": _instant(recorded, "recorded"),
            "agent": agents,
        }
    )


def capability_statement(
    *,
    software_version: str,
    base_url: str | None = None,
    date: dt.datetime | None = None,
) -> CapabilityStatement:
    """The server's CapabilityStatement (R4B 2.40): read and search of DiagnosticReport (by
    patient, study, status, date) and ImagingStudy (by patient, identifier), JSON only."""

    def param(name: str, kind: str, doc: str) -> dict[str, str]:
        return {"name": name, "type": kind, "documentation": doc}

    interactions = [{"code": "read"}, {"code": "search-type"}]
    implementation: dict[str, Any] = {"description": "RadDraft chest radiograph reports"}
    if base_url:
        implementation["url"] = base_url
    return CapabilityStatement.model_validate(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": _instant(date or dt.datetime.now(dt.UTC), "date"),
            "kind": "instance",
            "software": {"name": "RadDraft", "version": software_version},
            "implementation": implementation,
            "fhirVersion": FHIR_VERSION,
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "DiagnosticReport",
                            "interaction": interactions,
                            "searchParam": [
                                param("_id", "token", "Resource id"),
                                param(
                                    "patient",
                                    "reference",
                                    "Patient by identifier: patient.identifier=system|value",
                                ),
                                param(
                                    "study",
                                    "token",
                                    "The DICOM study: urn:dicom:uid|urn:oid:<StudyInstanceUID>",
                                ),
                                param(
                                    "status", "token", "preliminary | final | amended | corrected"
                                ),
                                param("date", "date", "effectiveDateTime"),
                            ],
                        },
                        {
                            "type": "ImagingStudy",
                            "interaction": interactions,
                            "searchParam": [
                                param("_id", "token", "Resource id"),
                                param(
                                    "patient",
                                    "reference",
                                    "Patient by identifier: patient.identifier=system|value",
                                ),
                                param(
                                    "identifier",
                                    "token",
                                    "urn:dicom:uid|urn:oid:<StudyInstanceUID> or accession",
                                ),
                            ],
                        },
                    ],
                }
            ],
        }
    )


def parse_resource(data: str | bytes | Mapping[str, Any]) -> Resource:
    """Any R4B resource from JSON text or a dict, by its resourceType."""
    obj = json.loads(data) if isinstance(data, str | bytes) else dict(data)
    kind = obj.get("resourceType")
    if not isinstance(kind, str):
        raise ValueError("no resourceType")
    model = get_fhir_model_class(kind)
    resource = model.model_validate(obj)
    assert isinstance(resource, Resource)
    return resource


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

"""What the FHIR R4B builders share: the version, code systems, the patient and image values,
resource ids, references between the resources, and parsing (``fhir.resources.R4B``, 4.3.0).

Resource ids follow R4B 2.24.0.1 (``[A-Za-z0-9-.]{1,64}``); references are R4B Reference
datatypes (https://hl7.org/fhir/R4B/references.html) by identifier and, where the target is
served here, literally. Private to :mod:`report_drafts.builders`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydicom import Dataset

from report_drafts.content import Signer

FHIR_VERSION = "4.3.0"
DICOM_UID_SYSTEM = "urn:dicom:uid"
LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
#: Identifier system of RadDraft user logins (the signing radiologists).
USER_SYSTEM = "urn:raddraft:user"

_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")


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


def fhir_id_for(uid: str) -> str:
    """A FHIR id for a DICOM UID: the UID itself when it is one (digits and dots always are),
    else ``uid-`` and 40 hex digits of its SHA-256, the same every time for the same UID, so
    an odd UID a modality sent still names one resource and never fails the rest."""
    if _ID_RE.match(uid):
        return uid
    return "uid-" + hashlib.sha256(uid.encode("utf-8")).hexdigest()[:40]


def is_fhir_id(value: str) -> bool:
    """Whether ``value`` fits the R4B id datatype ([A-Za-z0-9-.]{1,64})."""
    return bool(_ID_RE.match(value))


def resource_id_for(text: str) -> str:
    """A FHIR id made from free text (a login, a UID): other characters become '-'."""
    return check_id(re.sub(r"[^A-Za-z0-9\-.]", "-", text)[:64] or "x")


def instant(value: dt.datetime, what: str) -> str:
    """An R4B instant / dateTime with time: ``value`` must be timezone aware."""
    if value.tzinfo is None:
        raise ValueError(f"{what} needs a timezone (FHIR instant/dateTime with time)")
    return value.isoformat()


def study_identifier(study_instance_uid: str) -> dict[str, str]:
    """The Identifier of a DICOM study: ``urn:dicom:uid`` / ``urn:oid:<StudyInstanceUID>``."""
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_instance_uid}"}


def patient_reference(patient: PatientRef) -> dict[str, Any]:
    """A Patient reference by identifier (RadDraft serves no Patient resource)."""
    ref: dict[str, Any] = {
        "type": "Patient",
        "identifier": {"system": patient.system, "value": patient.id},
    }
    if patient.name:
        ref["display"] = patient.name
    return ref


def practitioner_reference(signer: Signer) -> dict[str, Any]:
    """Reference to the signer's Practitioner (id from the login, see
    :func:`~report_drafts.builders.fhir_provenance.practitioner`)."""
    return {
        "reference": f"Practitioner/{resource_id_for(signer.login)}",
        "type": "Practitioner",
        "identifier": {"system": USER_SYSTEM, "value": signer.login},
        "display": signer.name.replace("^", " ").strip(),
    }


def accession_identifier(accession: str) -> dict[str, Any]:
    """The accession number as an Identifier of type ACSN (HL7 v2-0203)."""
    return {
        "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
        "value": accession,
    }


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

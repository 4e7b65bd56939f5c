"""The ImagingStudy of a study (FHIR R4B ImagingStudy, https://hl7.org/fhir/R4B/imagingstudy.html):
its DICOM Study Instance UID as identifier, series and instances as the archive holds them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from fhir.resources.R4B.imagingstudy import ImagingStudy

from report_drafts.builders._fhir import (
    DCM,
    ImageRef,
    PatientRef,
    accession_identifier,
    check_id,
    instant,
    is_fhir_id,
    patient_reference,
    study_identifier,
)

log = logging.getLogger(__name__)


def imaging_study(  # noqa: C901 (one branch per optional ImagingStudy element)
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
    """The ImagingStudy (R4B 4.6) of a study: DICOM UID identifier, series and instances.

    ``series.uid`` and ``instance.uid`` are of the R4B id datatype: an image whose UID does not
    fit it (a modality's ``_``) is left out and logged, never failing the study's resource."""
    if status not in {"registered", "available", "cancelled", "entered-in-error", "unknown"}:
        raise ValueError(f"invalid ImagingStudy status {status!r}")
    series: dict[str, dict[str, Any]] = {}
    kept = [i for i in images if is_fhir_id(i.series_uid) and is_fhir_id(i.sop_instance_uid)]
    for image in [i for i in images if i not in kept]:
        log.warning(
            "ImagingStudy %s: image %s of series %s left out: a UID FHIR cannot carry as id",
            resource_id,
            image.sop_instance_uid,
            image.series_uid,
        )
    images = kept
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
    identifiers: list[dict[str, Any]] = [study_identifier(study_instance_uid)]
    if accession:
        identifiers.append(accession_identifier(accession))
    data: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": check_id(resource_id),
        "identifier": identifiers,
        "status": status,
        "subject": patient_reference(patient),
    }
    if series:
        data["series"] = list(series.values())
        data["numberOfSeries"] = len(series)
        data["numberOfInstances"] = len(images)
        modalities = sorted({image.modality for image in images})
        data["modality"] = [{"system": DCM, "code": m} for m in modalities]
    if started is not None:
        data["started"] = instant(started, "started")
    if description:
        data["description"] = description
    return ImagingStudy.model_validate(data)

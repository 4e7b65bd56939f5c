"""The server's CapabilityStatement (FHIR R4B CapabilityStatement,
https://hl7.org/fhir/R4B/capabilitystatement.html): what ``/fhir/`` serves, read and search.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from report_drafts.builders._fhir import FHIR_VERSION, instant


def capability_statement(
    *,
    software_version: str,
    base_url: str | None = None,
    date: dt.datetime | None = None,
) -> CapabilityStatement:
    """The server's CapabilityStatement (R4B 2.40): read and search of DiagnosticReport (by
    id, patient/subject, identifier, study, status, date, based-on, _lastUpdated) and
    ImagingStudy (by id, patient/subject, identifier), versioned reads, JSON only."""

    def param(name: str, kind: str, doc: str) -> dict[str, str]:
        return {"name": name, "type": kind, "documentation": doc}

    interactions = [{"code": "read"}, {"code": "search-type"}]
    # Reads carry meta.versionId and an ETag (R4B 2.40 CapabilityStatement.rest.resource).
    versioning = "versioned"
    implementation: dict[str, Any] = {"description": "RadDraft chest radiograph reports"}
    if base_url:
        implementation["url"] = base_url
    return CapabilityStatement.model_validate(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": instant(date or dt.datetime.now(dt.UTC), "date"),
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
                            "versioning": versioning,
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
                                param("subject", "reference", "as patient"),
                                param(
                                    "identifier",
                                    "token",
                                    "accession number, SR urn:oid:<SOPInstanceUID>, or id",
                                ),
                                param(
                                    "based-on",
                                    "reference",
                                    "the order: ServiceRequest/<accession number>",
                                ),
                                param("_lastUpdated", "date", "when the version shown was made"),
                            ],
                        },
                        {
                            "type": "ImagingStudy",
                            "interaction": interactions,
                            "versioning": versioning,
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
                                param("subject", "reference", "as patient"),
                            ],
                        },
                    ],
                }
            ],
        }
    )

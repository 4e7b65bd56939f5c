"""The pure builders of what leaves RadDraft, one module per DICOM IOD or message, named after it.

Each takes the plain values of :mod:`report_drafts.content` and returns the object (a highdicom
dataset, ER7 text, a ``fhir.resources`` model); none reads the database or the settings, none
sends anything. The public face:

DICOM (:mod:`.sr_tid1500`, :mod:`.gsps`, shared codes and checks in the private :mod:`._dicom`)
    ``build_sr``: PS3.16 TID 1500 Measurement Report in a Comprehensive 3D SR, PS3.3 A.35.13
    ``build_gsps``: Grayscale Softcopy Presentation State IOD, PS3.3 A.33.1
    ``device_uid_for``: the Device Observer UID of a model version, PS3.16 TID 1004
    ``build_rejection_note``: IHE IOCM rejection note, Key Object Selection Document PS3.3
    A.35.4 (:mod:`.kos_rejection_note`), withdrawing a draft's SR and GSPS
HL7 v2 (:mod:`.hl7_oru_r01`)
    ``oru_r01``: ORU^R01, HL7 v2.5.1 ch. 7 (values escaped per ch. 2.7)
    ``result_status``: OBR-25 / OBX-11 result status, HL7 v2.5.1 table 0123 / 0085
    (``oru_r01(..., withdrawal=why)``: OBR-25 X, OBX-11 W)
    ``text_lines``: the TX OBX-5 lines of an ORU^R01, unescaped (HL7 v2.5.1 ch. 7.4.2)
FHIR R4B 4.3.0 (one module per resource, shared pieces in the private :mod:`._fhir`)
    ``diagnostic_report``: DiagnosticReport (:mod:`.fhir_diagnostic_report`), R4B DiagnosticReport
    ``report_status``: DiagnosticReport.status, R4B value set diagnostic-report-status
    ``parse_diagnostic_report``: a DiagnosticReport read back, its status checked
    ``presented_text``: the text/plain presentedForm of a DiagnosticReport (R4B Attachment)
    ``imaging_study``: ImagingStudy (:mod:`.fhir_imaging_study`), R4B ImagingStudy
    ``provenance``: Provenance (:mod:`.fhir_provenance`), R4B Provenance: device author, verifier
    ``device``: the AI model as author, R4B Device
    ``practitioner``: the signing radiologist as verifier, R4B Practitioner
    ``capability_statement``: the server's (:mod:`.fhir_capability_statement`), R4B
    CapabilityStatement
    ``image_refs``: ImagingStudy series / instance values read from DICOM headers
    ``resource_id_for``: a FHIR id from free text, R4B 2.24.0.1 (id datatype)
    ``fhir_id_for``: a stable FHIR id for a DICOM UID, valid whatever the UID
    ``parse_resource``: any R4B resource from JSON, by resourceType
    ``PatientRef``, ``ImageRef``: the patient and image values the FHIR builders take

Builders import nothing of RadDraft but :mod:`report_drafts.content` and each other's private
``_dicom`` / ``_fhir``: no SQLAlchemy, no settings (``tests/builders/test_layout.py`` checks it).
"""

from report_drafts.builders._dicom import device_uid_for
from report_drafts.builders._fhir import (
    ImageRef,
    PatientRef,
    fhir_id_for,
    image_refs,
    parse_resource,
    resource_id_for,
)
from report_drafts.builders.fhir_capability_statement import capability_statement
from report_drafts.builders.fhir_diagnostic_report import (
    diagnostic_report,
    parse_diagnostic_report,
    presented_text,
    report_status,
)
from report_drafts.builders.fhir_imaging_study import imaging_study
from report_drafts.builders.fhir_provenance import device, practitioner, provenance
from report_drafts.builders.gsps import build_gsps
from report_drafts.builders.hl7_oru_r01 import oru_r01, result_status, text_lines
from report_drafts.builders.kos_rejection_note import build_rejection_note
from report_drafts.builders.sr_tid1500 import build_sr

__all__ = [
    "ImageRef",
    "PatientRef",
    "build_gsps",
    "build_rejection_note",
    "build_sr",
    "capability_statement",
    "device",
    "device_uid_for",
    "diagnostic_report",
    "fhir_id_for",
    "image_refs",
    "imaging_study",
    "oru_r01",
    "parse_diagnostic_report",
    "parse_resource",
    "practitioner",
    "presented_text",
    "provenance",
    "report_status",
    "resource_id_for",
    "result_status",
    "text_lines",
]

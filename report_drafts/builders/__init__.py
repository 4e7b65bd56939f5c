"""The pure builders of what leaves RadDraft, one module per DICOM IOD or message.

- :func:`build_sr` (:mod:`.sr_tid1500`): PS3.16 TID 1500 Measurement Report in the
  Comprehensive 3D SR IOD, PS3.3 A.35.13.
- :func:`build_gsps` (:mod:`.gsps`): Grayscale Softcopy Presentation State IOD, PS3.3 A.33.1.
- :func:`oru_r01` (:mod:`.hl7_oru_r01`): HL7 v2.5.1 ORU^R01 (chapter 7), escaped per
  chapter 2.7; :func:`result_status` its OBR-25 / OBX-11, :func:`text_lines` its TX OBX-5 read
  back.
- FHIR R4B (4.3.0): :func:`diagnostic_report`, :func:`imaging_study`, :func:`provenance`,
  :func:`device`, :func:`practitioner`, :func:`capability_statement`.
- :func:`device_uid_for` (:mod:`._dicom`): the Device Observer UID, PS3.16 TID 1004.

Builders import nothing of RadDraft but :mod:`report_drafts.content` and each other's private
``_dicom``: no database, no settings (``tests/builders/test_layout.py`` checks it).
"""

from report_drafts.builders._dicom import device_uid_for
from report_drafts.builders._fhir import (
    ImageRef,
    PatientRef,
    capability_statement,
    device,
    diagnostic_report,
    image_refs,
    imaging_study,
    parse_diagnostic_report,
    parse_resource,
    practitioner,
    presented_text,
    provenance,
    report_status,
    resource_id_for,
)
from report_drafts.builders.gsps import build_gsps
from report_drafts.builders.hl7_oru_r01 import oru_r01, result_status, text_lines
from report_drafts.builders.sr_tid1500 import build_sr

__all__ = [
    "ImageRef",
    "PatientRef",
    "build_gsps",
    "build_sr",
    "capability_statement",
    "device",
    "device_uid_for",
    "diagnostic_report",
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

"""Reading just enough of a received dataset: identifiers, patient, request and view attributes.

The pixel data is never decoded: :func:`read_header` stops before (7FE0,0010) and keeps only the
tags the archive tables need, so a 10 MB radiograph costs a few kilobytes of parsing.
"""

from __future__ import annotations

import re
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_listener.limits import Limits, check_file
from raddraft.jobs import Priority

# The tags read from each instance (PS3.3 attribute names). Sequences are listed whole; pydicom
# reads their items in full, which is cheap for the small request and code sequences here.
HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ReferringPhysicianName",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "AnatomicRegionSequence",
    "InstanceNumber",
    "ViewPosition",
    "ViewCodeSequence",
    "ImageType",
    "PresentationIntentType",
    "ImageLaterality",
    "Laterality",
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "RequestedProcedurePriority",
    "ReasonForTheRequestedProcedure",
    "ReasonForRequestedProcedureCodeSequence",
    "RequestAttributesSequence",
    "AdmittingDiagnosesDescription",
)
HEADER_TAGS = [Tag(keyword) for keyword in HEADER_KEYWORDS]
_PIXEL_DATA = Tag("PixelData")
_WARNINGS_LOCK = threading.Lock()
_DEFLATED = "1.2.840.10008.1.2.1.99"

# A UID becomes a path component in the archive, so it must not be able to climb out of it.
# PS3.5 9.1 allows digits and dots only; letters, '-' and '_' are tolerated because some
# modalities send them, '..' and '/' never.
_SAFE_UID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")

# RequestedProcedurePriority (0040,1003) defined terms, PS3.3 C.4.11.
_PRIORITIES = {
    "STAT": Priority.stat,
    "HIGH": Priority.high,
    "ROUTINE": Priority.routine,
    "MEDIUM": Priority.routine,
    "LOW": Priority.low,
}


class UnreadableDataset(ValueError):
    """The bytes are not a DICOM dataset pydicom can parse (answered 0xC000)."""


class IncompleteDataset(ValueError):
    """The dataset parses but lacks an identifier the archive needs (answered 0xA900)."""


@dataclass(frozen=True)
class InstanceHeader:
    """What the archive records of one instance; every text already stripped."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    referring_physician: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    body_part_examined: str = ""
    instance_number: str = ""
    view_position: str = ""
    view_code: str = ""
    image_type: str = ""
    presentation_intent: str = ""
    image_laterality: str = ""
    rows: int | None = None
    columns: int | None = None
    photometric_interpretation: str = ""
    priority: int = Priority.routine
    indication: str = ""
    transfer_syntax_uid: str = ""
    media_storage_sop_class_uid: str = ""  # (0002,0002), from a Part 10 file's meta
    problems: tuple[str, ...] = field(default=())


def _text(ds: Dataset, keyword: str, limit: int = 0) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    text = str(value).strip().replace("\x00", "")
    return text[:limit] if limit else text


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _code_meaning(ds: Dataset, keyword: str) -> str:
    sequence = ds.get(keyword)
    if not sequence:
        return ""
    item = sequence[0]
    return _text(item, "CodeMeaning") or _text(item, "CodeValue")


def _request_values(ds: Dataset, keyword: str) -> list[str]:
    """``keyword`` at the top level and in each Request Attributes Sequence item."""
    values = [_text(ds, keyword)]
    for item in ds.get("RequestAttributesSequence") or []:
        values.append(_text(item, keyword))
        if keyword == "ReasonForTheRequestedProcedure":
            values.append(_code_meaning(item, "ReasonForRequestedProcedureCodeSequence"))
    if keyword == "ReasonForTheRequestedProcedure":
        values.append(_code_meaning(ds, "ReasonForRequestedProcedureCodeSequence"))
    return [v for v in values if v]


def _indication(ds: Dataset) -> str:
    """Reason for the request (PS3.3 C.4.11 / C.4.10), then admitting diagnoses, deduplicated."""
    parts = [*_request_values(ds, "ReasonForTheRequestedProcedure")]
    parts.append(_text(ds, "AdmittingDiagnosesDescription"))
    seen: list[str] = []
    for part in parts:
        if part and part not in seen:
            seen.append(part)
    return "; ".join(seen)


def _priority(ds: Dataset) -> int:
    """The most urgent RequestedProcedurePriority found; routine when none."""
    found = [_PRIORITIES.get(v.upper()) for v in _request_values(ds, "RequestedProcedurePriority")]
    urgent = [p for p in found if p is not None]
    return int(min(urgent)) if urgent else int(Priority.routine)


def safe_uid(uid: str) -> bool:
    """True when ``uid`` may name a folder or file in the archive."""
    return bool(_SAFE_UID.match(uid)) and ".." not in uid


def header_from_dataset(ds: Dataset, transfer_syntax_uid: str = "") -> InstanceHeader:
    """The archive's view of ``ds``; raises :class:`IncompleteDataset` when it cannot be filed.

    Study, Series and SOP Instance UID are Type 1 (PS3.3 C.7.2.1, C.7.3.1, C.12.1); Patient ID
    is Type 2 there but RadDraft needs it to find priors, so an empty one is refused too.
    """
    header = InstanceHeader(
        sop_class_uid=_text(ds, "SOPClassUID", 64),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID", 64),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        birth_date=_text(ds, "PatientBirthDate", 8),
        sex=_text(ds, "PatientSex", 16),
        accession_number=_text(ds, "AccessionNumber", 64),
        study_id=_text(ds, "StudyID", 16),
        study_date=_text(ds, "StudyDate", 8),
        study_time=_text(ds, "StudyTime", 32),
        study_description=_text(ds, "StudyDescription", 256),
        referring_physician=_text(ds, "ReferringPhysicianName", 324),
        modality=_text(ds, "Modality", 16).upper(),
        series_number=_text(ds, "SeriesNumber", 12),
        series_description=_text(ds, "SeriesDescription", 256),
        # Anatomic Region Sequence stands in when BodyPartExamined is absent (PS3.3 C.8.11.5).
        body_part_examined=(
            _text(ds, "BodyPartExamined", 64) or _code_meaning(ds, "AnatomicRegionSequence")[:64]
        ),
        instance_number=_text(ds, "InstanceNumber", 12),
        view_position=_text(ds, "ViewPosition", 16).upper(),
        view_code=_code_meaning(ds, "ViewCodeSequence")[:64],
        image_type=_text(ds, "ImageType", 64).upper(),
        presentation_intent=_text(ds, "PresentationIntentType", 16).upper(),
        image_laterality=(_text(ds, "ImageLaterality", 4) or _text(ds, "Laterality", 4)),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        photometric_interpretation=_text(ds, "PhotometricInterpretation", 16),
        priority=_priority(ds),
        indication=_indication(ds),
        transfer_syntax_uid=transfer_syntax_uid,
    )
    missing = [
        name
        for name, value in (
            ("StudyInstanceUID", header.study_instance_uid),
            ("SeriesInstanceUID", header.series_instance_uid),
            ("SOPInstanceUID", header.sop_instance_uid),
            ("SOPClassUID", header.sop_class_uid),
            ("PatientID", header.patient_id),
        )
        if not value
    ]
    if missing:
        raise IncompleteDataset("missing " + ", ".join(missing))
    for name, uid in (
        ("StudyInstanceUID", header.study_instance_uid),
        ("SeriesInstanceUID", header.series_instance_uid),
        ("SOPInstanceUID", header.sop_instance_uid),
    ):
        if not safe_uid(uid):
            raise IncompleteDataset(f"{name} {uid[:80]!r} is not a valid UID")
    return header


def read_header(path: Path, limits: Limits | None = None) -> InstanceHeader:
    """Parse the header of the DICOM file at ``path`` (preamble and file meta present).

    :func:`dicom_listener.limits.check_file` runs first, so a data set that is too large,
    nests too deep or would inflate too far raises :class:`~dicom_listener.limits.OverLimit`
    before pydicom reads any of it.

    Values over a kilobyte are skipped, not read, so the pixel data costs nothing; its length
    is still checked against the file's size, which catches a truncated dataset (PS3.5 7.1).
    Raises :class:`UnreadableDataset` when pydicom cannot parse it or it is truncated, and
    :class:`IncompleteDataset` when an identifier is missing.
    """
    check_file(path, limits or Limits())
    try:
        # pydicom only warns when an undefined-length value runs past the end of the file;
        # catch_warnings is process-global, hence the lock around it.
        with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = dcmread(path, defer_size=1024, specific_tags=[*HEADER_TAGS, _PIXEL_DATA])
        for warning in caught:
            if "End of file" in str(warning.message):
                raise UnreadableDataset(f"truncated: {warning.message}")
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        pixels = ds.get_item(_PIXEL_DATA, keep_deferred=True)
        tell = getattr(pixels, "value_tell", None)
        length = getattr(pixels, "length", None)
        # A deflated data set's offsets are in the inflated stream, not the file (PS3.5 A.5).
        deflated = syntax == _DEFLATED
        if tell is not None and length is not None and length != 0xFFFFFFFF and not deflated:
            size = path.stat().st_size
            if tell + length > size:
                raise UnreadableDataset(
                    f"truncated: Pixel Data needs {tell + length} bytes, file has {size}"
                )
        header = header_from_dataset(ds, syntax)
        media = str(ds.file_meta.get("MediaStorageSOPClassUID", "")).strip().rstrip("\x00")
        header = replace(header, media_storage_sop_class_uid=media[:64])
    except (IncompleteDataset, UnreadableDataset):
        raise
    except Exception as error:  # pydicom raises a wide variety of errors on garbage input
        raise UnreadableDataset(f"{type(error).__name__}: {error}") from error
    return header

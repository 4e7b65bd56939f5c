"""What the SR and GSPS builders share: codes for findings and sites, source copies, device UIDs.

Private to :mod:`report_drafts.builders` (``device_uid_for`` is re-exported there).

Codes follow PS3.16: SNOMED CT ("SCT") where DICOM or SNOMED has a concept RadDraft is sure of,
else RadDraft's private coding scheme ``99RADDRAFT`` (PS3.3 C.12.1.1.2.1: private designators
start with "99"), declared in the Coding Scheme Identification Sequence of every object.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from copy import deepcopy

from highdicom import UID
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom import Dataset
from pydicom.uid import generate_uid

from report_drafts.content import Algorithm
from report_drafts.text_safety import clean_text, fit
from report_drafts.vocabulary import coded_terms

MANUFACTURER = "RadDraft"
PRIVATE_SCHEME = "99RADDRAFT"

#: Attributes highdicom reads from the first source (PS3.3 C.7.1.1, C.7.2.1): often missing on
#: modality output, added empty (Type 2) to a copy.
REQUIRED_SOURCE_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
)

_PIXEL_KEYWORDS = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData", "OverlayData"})

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _sct(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="SCT", meaning=meaning)


#: Finding labels and terms (lower case) to SNOMED CT, from the one coded vocabulary
#: (:mod:`report_drafts.vocabulary`).
FINDING_CODES: dict[str, CodedConcept] = {
    text: CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)
    for text, code in coded_terms().items()
}

#: Finding sites (PS3.16 CID 4 / CID 7151 anatomic concepts).
SITE_CODES: dict[str, CodedConcept] = {
    "lung": _sct("39607008", "Lung"),
    "lower lobe of lung": _sct("90572001", "Lower lobe of lung"),
    "lower lobe": _sct("90572001", "Lower lobe of lung"),
    "upper lobe of lung": _sct("45653009", "Upper lobe of lung"),
    "upper lobe": _sct("45653009", "Upper lobe of lung"),
    "middle lobe of right lung": _sct("72481006", "Middle lobe of right lung"),
    "middle lobe": _sct("72481006", "Middle lobe of right lung"),
    "pleura": _sct("3120008", "Pleura"),
    "heart": _sct("80891009", "Heart"),
    "mediastinum": _sct("72410000", "Mediastinum"),
    "rib": _sct("113197003", "Rib"),
    "chest wall": _sct("78904004", "Chest wall"),
    "chest": _sct("816094009", "Chest"),
}

#: Laterality (PS3.16 CID 244).
LATERALITY_CODES: dict[str, CodedConcept] = {
    "left": _sct("7771000", "Left"),
    "right": _sct("24028007", "Right"),
    "bilateral": _sct("51440002", "Right and left"),
}

#: The site used when a laterality is known but no site: laterality modifies a finding site.
DEFAULT_SITE = SITE_CODES["chest"]


def normalize_label(label: str) -> str:
    """Lower case, single spaces: the key into the code tables."""
    return " ".join(label.lower().split())


def private_code(label: str) -> CodedConcept:
    """A ``99RADDRAFT`` code for a label no table knows; the value is the normalized label.

    Values over 16 characters become a Long Code Value (PS3.3 8.8), which highdicom does itself.
    """
    value = normalize_label(label).replace("\\", "/") or "unspecified"
    return CodedConcept(
        value=value, scheme_designator=PRIVATE_SCHEME, meaning=fit(clean_text(label).strip(), 64)
    )


def finding_code(label: str) -> CodedConcept:
    """The coded finding for a model label: SNOMED CT when known, else a private code."""
    return FINDING_CODES.get(normalize_label(label)) or private_code(label)


def site_code(site: str | None) -> CodedConcept | None:
    """The coded finding site for a free-text site, or None when there is none."""
    if not site or not site.strip():
        return None
    return SITE_CODES.get(normalize_label(site)) or private_code(site)


def laterality_code(laterality: str | None) -> CodedConcept | None:
    """SNOMED CT laterality for "left", "right" or "bilateral"; other values are refused."""
    if not laterality:
        return None
    key = normalize_label(laterality)
    if key not in LATERALITY_CODES:
        raise ValueError(f"unknown laterality {laterality!r}: use left, right or bilateral")
    return LATERALITY_CODES[key]


def coding_schemes() -> list[CodingSchemeIdentificationItem]:
    """The Coding Scheme Identification Sequence item for the private scheme (PS3.3 C.12.1)."""
    return [
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name="RadDraft finding labels",
            responsible_organization=MANUFACTURER,
        )
    ]


def device_uid_for(algorithm: Algorithm) -> str:
    """A stable Device Observer UID (TID 1004) per deployed model version.

    Derived from the model name, model revision and RadDraft version, so every worker with the
    same deployment names the same device and a new revision is a new device.
    """
    return str(
        generate_uid(
            entropy_srcs=[
                "raddraft-device",
                algorithm.name,
                algorithm.version,
                algorithm.program_version,
            ]
        )
    )


def check_uid(value: str, what: str) -> str:
    """Refuse a value that is not a DICOM UID (PS3.5 9.1): digits and dots, at most 64 chars."""
    if not value or len(value) > 64 or not _UID_RE.match(value):
        raise ValueError(f"{what} is not a DICOM UID: {value!r}")
    return value


def prepared_source(source: Dataset) -> Dataset:
    """A header-only copy of a source image with the attributes highdicom needs present.

    The caller's dataset is never changed (objects once stored are never modified); pixel data is
    left out of the copy since the builders only read the header.
    """
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source.get(keyword):
            raise ValueError(f"source image lacks {keyword}")
    copy = Dataset()
    for element in source:
        if element.keyword in _PIXEL_KEYWORDS:
            continue
        copy.add(deepcopy(element))
    for keyword in REQUIRED_SOURCE_ATTRIBUTES:
        if keyword not in copy:
            setattr(copy, keyword, "")
    return copy


def check_same_study(datasets: Sequence[Dataset]) -> str:
    """The one StudyInstanceUID of all datasets; objects of a study reference only that study."""
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    if len(studies) != 1:
        raise ValueError(f"sources span {len(studies)} studies, expected one")
    return studies.pop()


def new_uid() -> str:
    """A fresh SOP Instance UID."""
    return str(UID())

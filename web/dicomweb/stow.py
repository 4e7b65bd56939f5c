"""The Store Instances response (PS3.18 10.5.3): what was stored, what failed and why.

The body is one DICOM JSON data set (PS3.18 F.2) with ``RetrieveURL`` (0008,1190) of the study,
``ReferencedSOPSequence`` (0008,1199) for the instances stored and ``FailedSOPSequence``
(0008,1198) with a ``FailureReason`` (0008,1197) for each one not stored: the C-STORE status
the listener would have answered (0xA700 out of resources, 0xA900 data set does not match,
0xC000 cannot understand). The HTTP status (PS3.18 Table 10.5.3-1): 200 when every instance
was stored, 202 when some were, 409 when none was; 503 with ``Retry-After`` when none was
because the archive is out of resources (the disk watermark), so a sender retries later as a
C-STORE SCU does on 0xA700. An instance refused for breaking the bounds (too large, inflating
too far: also 0xA700) is no reason to retry: 409.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

import pydicom
from pydicom import Dataset

OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # also: the instance belongs to another study than the request names
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class StowOutcome:
    """One part of the request: its identifiers (when readable) and the status it got."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    status: int
    reason: str = ""
    transient: bool = False  # refused for now (disk, database): worth sending again later

    @property
    def stored(self) -> bool:
        return self.status == 0x0000


DEFLATED = b"1.2.840.10008.1.2.1.99"
#: How much of a deflated data set is inflated to find its UIDs (they come before the images).
HEADER_BYTES = 1 << 20


def _readable(data: bytes) -> BytesIO:
    """The part as pydicom may read it for its UIDs. pydicom inflates a deflated data set whole
    before reading a tag (a 64 MB deflate bomb cost the web process 128 MB, bench/fuzz.py), so
    only its first ``HEADER_BYTES`` are inflated here, read as a bare explicit VR data set; the
    listener's bounded reader files the part itself."""
    if data[128:132] != b"DICM" or DEFLATED not in data[132:1024]:
        return BytesIO(data)
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, PS3.10 7.1
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    return BytesIO(inflater.decompress(data[144 + group_length :], HEADER_BYTES))


def identify(data: bytes) -> tuple[str, str, str, str]:
    """(SOP Class, SOP Instance, Study, Series Instance UID) of a part; empty if unreadable."""
    try:
        ds = pydicom.dcmread(
            _readable(data),
            stop_before_pixels=True,
            force=True,
            specific_tags=[
                "SOPClassUID",
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
            ],
        )
        return (
            str(ds.get("SOPClassUID", "")),
            str(ds.get("SOPInstanceUID", "")),
            str(ds.get("StudyInstanceUID", "")),
            str(ds.get("SeriesInstanceUID", "")),
        )
    except Exception:  # any parse failure: the listener quarantines it and says why
        return "", "", "", ""


def http_status(outcomes: Sequence[StowOutcome]) -> int:
    stored = sum(1 for o in outcomes if o.stored)
    if outcomes and stored == len(outcomes):
        return 200
    if stored:
        return 202
    if outcomes and all(o.status == OUT_OF_RESOURCES and o.transient for o in outcomes):
        return 503
    return 409


def response(outcomes: Sequence[StowOutcome], base_url: str, study_uid: str | None) -> Dataset:
    """The response data set; ``base_url`` is the service root (``.../dicomweb``)."""
    ds = Dataset()
    studies = {o.study_instance_uid for o in outcomes if o.stored} | ({study_uid} - {None})
    if len(studies) == 1:
        ds.RetrieveURL = f"{base_url}/studies/{next(iter(studies))}"
    referenced = []
    failed = []
    for outcome in outcomes:
        item = Dataset()
        item.ReferencedSOPClassUID = outcome.sop_class_uid or None
        item.ReferencedSOPInstanceUID = outcome.sop_instance_uid or None
        if outcome.stored:
            item.RetrieveURL = (
                f"{base_url}/studies/{outcome.study_instance_uid}/series/"
                f"{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}"
            )
            referenced.append(item)
        else:
            item.FailureReason = outcome.status
            failed.append(item)
    if referenced:
        ds.ReferencedSOPSequence = referenced
    if failed:
        ds.FailedSOPSequence = failed
    return ds

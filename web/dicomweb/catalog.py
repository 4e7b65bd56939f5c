"""What a DICOMweb client may find: archived instances and RadDraft's own SR and GSPS.

QIDO-RS (PS3.18 10.6) searches studies, series and instances. The attributes kept in the
archive's tables (PS3.18 Table 10.6.1-5 lists the ones a service should support) are matched
here with the rules of PS3.4 C.2.2.2: single value, wildcard (``*``, ``?``), list of UIDs, and
date/time range; other keys are ignored and named in a ``Warning`` header (PS3.18 8.3.4.1).
Attributes asked for by ``includefield`` that the tables do not hold are read from an
instance's header (the first of the study or series).

RadDraft's SR (TID 1500) and GSPS objects live in the database's outbox (written once, never
changed) and are materialised into this process's ``data_dir/outbox``, so their headers are read
from the file and cached for the life of the process.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from dicom_listener import Instance, Patient, Series, Study
from raddraft.settings import Settings
from report_drafts import OutboxPayloadError, Report, ReportVersion, materialise, served_outbox_uids

log = logging.getLogger(__name__)

STUDY_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
)
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription")
INSTANCE_KEYS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns")
# Computed per level (PS3.18 Table 10.6.3-2..4); matched only for ModalitiesInStudy.
STUDY_COMPUTED = (
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_COMPUTED = ("NumberOfSeriesRelatedInstances",)
# Query parameters that are not attribute keys (PS3.18 8.3.4).
CONTROL_PARAMS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})

LEVEL_KEYS: dict[str, tuple[str, ...]] = {
    "study": STUDY_KEYS + STUDY_COMPUTED,
    "series": STUDY_KEYS + SERIES_KEYS + SERIES_COMPUTED,
    "instance": STUDY_KEYS + SERIES_KEYS + INSTANCE_KEYS,
}


class QueryError(ValueError):
    """A query the service cannot run (a bad limit, an unknown attribute): HTTP 400."""


@dataclass(frozen=True)
class DicomObject:
    """One instance a client may search and retrieve, with the attributes QIDO matches."""

    path: Path
    attributes: Mapping[str, Any]  # keyword -> value, as DICOM JSON would carry it
    transfer_syntax_uid: str
    origin: str = "archive"  # or "outbox" (RadDraft's own SR/GSPS)

    def get(self, keyword: str) -> Any:
        return self.attributes.get(keyword, "")

    @property
    def study_uid(self) -> str:
        return str(self.attributes["StudyInstanceUID"])

    @property
    def series_uid(self) -> str:
        return str(self.attributes["SeriesInstanceUID"])

    @property
    def sop_uid(self) -> str:
        return str(self.attributes["SOPInstanceUID"])


@dataclass
class Query:
    """A parsed QIDO-RS request: matching keys, extra fields, paging."""

    match: dict[str, str] = field(default_factory=dict)
    include: list[str] = field(default_factory=list)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    ignored: list[str] = field(default_factory=list)


def keyword_of(key: str) -> str:
    """``PatientID`` or ``00100020`` -> the keyword; :class:`QueryError` if neither."""
    text = key.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        keyword = keyword_for_tag(int(text, 16))
        if keyword:
            return keyword
    elif tag_for_keyword(text) is not None:
        return text
    raise QueryError(f"{key!r} is neither a DICOM keyword nor a tag")


def parse_query(params: Iterable[tuple[str, str]], level: str) -> Query:
    """The query of a QIDO-RS request's parameters (PS3.18 8.3.4) at ``level``."""
    query = Query()
    for name, value in params:
        if name == "limit":
            query.limit = _count(name, value)
        elif name == "offset":
            query.offset = _count(name, value)
        elif name == "includefield":
            for item in value.split(","):
                if item.strip() == "all":
                    query.include_all = True
                elif item.strip():
                    query.include.append(keyword_of(item.split(".")[0]))
        elif name == "fuzzymatching":
            continue  # not supported: matching stays exact (PS3.18 8.3.4.5 allows that)
        else:
            keyword = keyword_of(name.split(".")[0])
            if keyword in LEVEL_KEYS[level] and keyword not in ("NumberOfStudyRelatedSeries",):
                query.match[keyword] = value
            else:
                query.ignored.append(name)
    return query


def _count(name: str, value: str) -> int:
    if not value.isdigit():
        raise QueryError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


# -- matching (PS3.4 C.2.2.2) ------------------------------------------------------------------


def _wildcard(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts) + r"\Z", re.IGNORECASE | re.DOTALL)


def _in_range(value: str, pattern: str) -> bool:
    low, _, high = pattern.partition("-")
    if not value:
        return False
    width = len(value)
    return (not low or value >= low[:width]) and (
        not high or value <= high.ljust(width, "9")[:width]
    )


def matches(keyword: str, value: Any, pattern: str) -> bool:
    """Whether ``value`` (a string or a list of strings) matches ``pattern`` for ``keyword``."""
    if pattern == "":
        return True  # universal matching: the key only asks for the attribute
    values = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    vr = dictionary_VR(keyword)
    if vr == "UI":
        wanted = {uid.strip() for uid in re.split(r"[,\\]", pattern) if uid.strip()}
        return any(v in wanted for v in values)
    if vr in ("DA", "TM", "DT") and "-" in pattern:
        return any(_in_range(v, pattern) for v in values)
    if "*" in pattern or "?" in pattern:
        regex = _wildcard(pattern)
        return any(regex.match(v) for v in values)
    if vr == "PN":
        return any(v.casefold() == pattern.casefold() for v in values)
    return any(v == pattern for v in values)


# -- loading the objects -------------------------------------------------------------------------


def _exact(pattern: str | None) -> str | None:
    """A pattern the database can match with ``=`` (no wildcard, no list, no range)."""
    if not pattern or any(c in pattern for c in "*?,\\-"):
        return None
    return pattern


def _study_rows(
    session: Session, match: Mapping[str, str], *where: ColumnElement[bool]
) -> list[tuple[Study, Patient]]:
    """Studies with their patients, narrowed in SQL by the exact study-level keys."""
    query = select(Study, Patient).join(Patient, Study.patient_pk == Patient.id).where(*where)
    uids = match.get("StudyInstanceUID")
    if uids:
        query = query.where(Study.study_instance_uid.in_(re.split(r"[,\\]", uids)))
    if patient_id := _exact(match.get("PatientID")):
        query = query.where(Patient.patient_id == patient_id)
    if accession := _exact(match.get("AccessionNumber")):
        query = query.where(Study.accession_number == accession)
    return [(study, patient) for study, patient in session.execute(query.order_by(Study.id))]


def study_page(session: Session, query: Query) -> list[str] | None:
    """For a study-level search on study attributes only: the StudyInstanceUIDs of the page
    asked for, matched and paged on the study rows alone, so a worklist query (OHIF asks
    ``/studies?limit=101``) reads the instances of one page, not of the whole archive.
    None when the query needs the instances to match (``ModalitiesInStudy``)."""
    if "ModalitiesInStudy" in query.match or not set(query.match) <= set(STUDY_KEYS):
        return None
    has_objects = or_(
        select(Series.id)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Series.study_pk == Study.id)
        .exists(),
        select(Report.id)
        .join(ReportVersion, ReportVersion.report_pk == Report.id)
        .where(Report.study_pk == Study.id, ReportVersion.sr_sop_instance_uid.is_not(None))
        .exists(),
    )
    uids = [
        study.study_instance_uid
        for study, patient in _study_rows(session, query.match, has_objects)
        if all(matches(k, _study_attributes(study, patient)[k], p) for k, p in query.match.items())
    ]
    end = None if query.limit is None else query.offset + query.limit
    return uids[query.offset : end]


def _study_attributes(study: Study, patient: Patient) -> dict[str, Any]:
    return {
        "StudyInstanceUID": study.study_instance_uid,
        "StudyDate": study.study_date,
        "StudyTime": study.study_time,
        "AccessionNumber": study.accession_number,
        "StudyID": study.study_id,
        "StudyDescription": study.study_description,
        "ReferringPhysicianName": study.referring_physician,
        "PatientName": patient.patient_name,
        "PatientID": patient.patient_id,
        "IssuerOfPatientID": patient.issuer_of_patient_id,
        "PatientBirthDate": patient.birth_date,
        "PatientSex": patient.sex,
    }


def load_objects(
    session: Session, settings: Settings, match: Mapping[str, str]
) -> list[DicomObject]:
    """Every object of the studies the exact study-level keys allow, archive then outbox."""
    studies = {study.id: (study, patient) for study, patient in _study_rows(session, match)}
    if not studies:
        return []
    found: list[DicomObject] = []
    rows = session.execute(
        select(Instance, Series)
        .join(Series, Instance.series_pk == Series.id)
        .where(Series.study_pk.in_(list(studies)))
        .order_by(Series.study_pk, Series.id, Instance.id)
    )
    for instance, series in rows:
        attributes = _study_attributes(*studies[series.study_pk])
        attributes.update(
            SeriesInstanceUID=series.series_instance_uid,
            Modality=series.modality,
            SeriesNumber=series.series_number,
            SeriesDescription=series.series_description,
            SOPClassUID=instance.sop_class_uid,
            SOPInstanceUID=instance.sop_instance_uid,
            InstanceNumber=instance.instance_number,
            Rows=instance.rows,
            Columns=instance.columns,
        )
        found.append(
            DicomObject(
                settings.archive_dir / instance.path, attributes, instance.transfer_syntax_uid
            )
        )
    found.extend(_outbox_objects(session, settings, studies))
    return found


def _outbox_objects(
    session: Session, settings: Settings, studies: Mapping[int, tuple[Study, Patient]]
) -> list[DicomObject]:
    """RadDraft's SR and GSPS of these studies, every version's, as written in the outbox;
    IHE IOCM: those a rejection note withdrew are left out, the note is served
    (:func:`report_drafts.served_outbox_uids`)."""
    found: list[DicomObject] = []
    for study_pk, uid in served_outbox_uids(session, list(studies)):
        try:
            # From the database when this process's disk has not seen it yet.
            path = materialise(session, settings, f"{uid}.dcm")
        except OutboxPayloadError as error:
            log.error("%s", error)
            continue
        header = _outbox_header(path)
        if header is None:
            continue
        attributes = _study_attributes(*studies[study_pk])
        attributes.update(header)
        found.append(
            DicomObject(path, attributes, str(header["TransferSyntaxUID"]), origin="outbox")
        )
    return found


@lru_cache(maxsize=4096)
def _outbox_header(path: Path) -> dict[str, Any] | None:
    """The series and instance attributes of an outbox file (immutable, so cached)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError):
        return None
    return {
        "SeriesInstanceUID": str(ds.SeriesInstanceUID),
        "Modality": str(ds.get("Modality", "")),
        "SeriesNumber": str(ds.get("SeriesNumber", "")),
        "SeriesDescription": str(ds.get("SeriesDescription", "")),
        "SOPClassUID": str(ds.SOPClassUID),
        "SOPInstanceUID": str(ds.SOPInstanceUID),
        "InstanceNumber": str(ds.get("InstanceNumber", "")),
        "Rows": None,
        "Columns": None,
        "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID),
    }


# -- grouping and answering ----------------------------------------------------------------------


def _group(objects: Sequence[DicomObject], level: str) -> dict[str, list[DicomObject]]:
    groups: dict[str, list[DicomObject]] = {}
    for item in objects:
        key = {"study": item.study_uid, "series": item.series_uid, "instance": item.sop_uid}[level]
        groups.setdefault(key, []).append(item)
    return groups


def _computed(level: str, members: Sequence[DicomObject]) -> dict[str, Any]:
    if level == "study":
        return {
            "ModalitiesInStudy": sorted({str(m.get("Modality")) for m in members} - {""}),
            "NumberOfStudyRelatedSeries": len({m.series_uid for m in members}),
            "NumberOfStudyRelatedInstances": len(members),
        }
    if level == "series":
        return {"NumberOfSeriesRelatedInstances": len(members)}
    return {}


def search(objects: Sequence[DicomObject], level: str, query: Query) -> list[list[DicomObject]]:
    """The groups (one per study, series or instance) that match, paged; in archive order."""
    own = {k: v for k, v in query.match.items() if k != "ModalitiesInStudy"}
    kept = [o for o in objects if all(matches(k, o.get(k), p) for k, p in own.items())]
    groups = list(_group(kept, level).values())
    if "ModalitiesInStudy" in query.match:
        pattern = query.match["ModalitiesInStudy"]
        groups = [
            g for g in groups if any(matches("Modality", m.get("Modality"), pattern) for m in g)
        ]
    end = None if query.limit is None else query.offset + query.limit
    return groups[query.offset : end]


def level_keys(level: str, query: Query) -> list[str]:
    """The attributes a response at ``level`` carries: the level's, those matched, included."""
    own = {
        "study": STUDY_KEYS + STUDY_COMPUTED,
        "series": (
            "Modality",
            "SeriesInstanceUID",
            "SeriesNumber",
            "SeriesDescription",
            *SERIES_COMPUTED,
        ),
        "instance": ("StudyInstanceUID", "SeriesInstanceUID", *INSTANCE_KEYS),
    }[level]
    return list(dict.fromkeys([*own, *query.match, *query.include]))


def answer(group: Sequence[DicomObject], level: str, query: Query) -> Dataset:
    """One QIDO-RS result: the attributes of the group's first object plus computed counts."""
    first = group[0]
    values = dict(first.attributes)
    values.update(_computed(level, group))
    ds = Dataset()
    header: Dataset | None = None
    for keyword in level_keys(level, query):
        if keyword in values:
            value = values[keyword]
            setattr(ds, keyword, value if value is not None else None)
            continue
        header = header if header is not None else read_header(first.path)
        if keyword in header:
            ds[keyword] = header[keyword]
    if query.include_all:
        header = header if header is not None else read_header(first.path)
        for element in header:
            if element.tag not in ds and element.tag.group > 0x0002:
                ds[element.tag] = element
    return ds


def read_header(path: Path) -> Dataset:
    """An object's data set without its pixel data (for includefield and metadata)."""
    return pydicom.dcmread(path, stop_before_pixels=True)


def find(
    objects: Sequence[DicomObject],
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[DicomObject]:
    """The objects under one study, series or instance (WADO-RS resource paths)."""
    return [
        o
        for o in objects
        if o.study_uid == study_uid
        and (series_uid is None or o.series_uid == series_uid)
        and (sop_uid is None or o.sop_uid == sop_uid)
    ]

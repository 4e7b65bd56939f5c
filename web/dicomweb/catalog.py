"""What a DICOMweb client may find: archived instances and RadDraft's own SR and GSPS.

QIDO-RS (PS3.18 10.6) searches studies, series and instances. The attributes kept in the
archive's tables (PS3.18 Table 10.6.1-5 lists the ones a service should support) are matched
in SQL with the rules of PS3.4 C.2.2.2 (:mod:`web.dicomweb.matching`): single value, wildcard
(``*``, ``?``), list of UIDs, and date/time range; other keys are ignored and named in a
``Warning`` header (PS3.18 8.3.4.1). Every search is paged in SQL (``limit``/``offset``, PS3.18
8.3.4.4) and answered in a fixed number of statements, whatever the archive holds: the page
(one row beyond it tells whether more match; nothing counts every match) and the computed
attributes of the page's rows. Attributes asked for by ``includefield``
that the tables do not hold are read from an instance's header (one per result).

RadDraft's SR (TID 1500) and GSPS objects live in the database's outbox (written once, never
changed) and are materialised into this process's ``data_dir/outbox``. A study-level search
counts them from the report versions' rows, reading no file; a series- or instance-level
search within one study lists them after the study's archived objects, reading their headers
(cached for the life of the process). A series- or instance-level search across studies lists
archived objects only: RadDraft's series are found within their study.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Select, case, distinct, func, select, union_all
from sqlalchemy.orm import Session

from dicom_listener import Instance, Patient, Series, Study
from raddraft.db import count_rows
from raddraft.numbers import decimal
from raddraft.settings import Settings
from report_drafts import (
    OutboxPayloadError,
    Report,
    ReportVersion,
    materialise,
    served_outbox_uids,
)
from web.dicomweb.matching import PatternError, condition, is_wildcard, matches, uid_list

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

#: Where the tables hold each matchable attribute.
COLUMNS: dict[str, Any] = {
    "StudyInstanceUID": Study.study_instance_uid,
    "StudyDate": Study.study_date,
    "StudyTime": Study.study_time,
    "AccessionNumber": Study.accession_number,
    "StudyID": Study.study_id,
    "StudyDescription": Study.study_description,
    "ReferringPhysicianName": Study.referring_physician,
    "PatientName": Patient.patient_name,
    "PatientID": Patient.patient_id,
    "IssuerOfPatientID": Patient.issuer_of_patient_id,
    "PatientBirthDate": Patient.birth_date,
    "PatientSex": Patient.sex,
    "SeriesInstanceUID": Series.series_instance_uid,
    "Modality": Series.modality,
    "SeriesNumber": Series.series_number,
    "SeriesDescription": Series.series_description,
    "SOPClassUID": Instance.sop_class_uid,
    "SOPInstanceUID": Instance.sop_instance_uid,
    "InstanceNumber": Instance.instance_number,
    "Rows": Instance.rows,
    "Columns": Instance.columns,
}

#: Instance Availability (0008,0056), required at every level (PS3.18 Table 10.6.3-3..5):
#: everything RadDraft lists is on its disk or in its database.
ONLINE = "ONLINE"
#: The modalities of RadDraft's own objects (counted at study level from the version rows).
SR_MODALITY, PR_MODALITY = "SR", "PR"


class QueryError(ValueError):
    """A query the service cannot run (a bad limit, an unknown attribute): HTTP 400."""


class _Uids:
    """The three UIDs of a result, read from its attributes."""

    attributes: Mapping[str, Any]

    @property
    def study_uid(self) -> str:
        return str(self.attributes["StudyInstanceUID"])

    @property
    def series_uid(self) -> str:
        return str(self.attributes["SeriesInstanceUID"])

    @property
    def sop_uid(self) -> str:
        return str(self.attributes["SOPInstanceUID"])


@dataclass(frozen=True)
class DicomObject(_Uids):
    """One instance a client may search and retrieve, with the attributes QIDO matches."""

    path: Path
    attributes: Mapping[str, Any]  # keyword -> value, as DICOM JSON would carry it
    transfer_syntax_uid: str
    origin: str = "archive"  # or "outbox" (RadDraft's own SR/GSPS)

    def get(self, keyword: str) -> Any:
        return self.attributes.get(keyword, "")


@dataclass
class Query:
    """A parsed QIDO-RS request: matching keys, extra fields, paging."""

    match: dict[str, str] = field(default_factory=dict)
    include: list[str] = field(default_factory=list)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    ignored: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Hit(_Uids):
    """One QIDO-RS result (a study, series or instance): its attributes, stored and computed,
    and a file whose header answers ``includefield`` beyond them."""

    attributes: Mapping[str, Any]
    header_path: Path | None


@dataclass(frozen=True)
class Found:
    """A page of results, and whether more match after it (so a client can tell it was cut).

    Whether more match is learnt by asking for one row beyond the page, never by counting every
    match: a count walks the whole archive (a second at 100,000 studies), and PS3.18 8.3.4.4's
    Warning says only that more results can be requested."""

    hits: list[Hit]
    more: bool


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
    number = decimal(value)
    if number is None:
        raise QueryError(f"{name} must be a non-negative integer below 10^9, not {value!r}")
    return number


def page_size(query: Query, settings: Settings) -> tuple[int, bool]:
    """The rows a page may hold: the client's ``limit``, the server's default without one, and
    never more than the server's maximum; and whether the client's limit was cut to it."""
    asked = settings.qido_default_limit if query.limit is None else query.limit
    return min(asked, settings.qido_max_limit), asked > settings.qido_max_limit


# -- searching: SQL over the archive's tables ------------------------------------------------------


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name


def _where(match: Mapping[str, str], keys: Sequence[str], dialect: str) -> list[Any]:
    """The SQL terms of the keys among ``keys`` (those the tables hold) that are not universal."""
    terms = []
    for keyword, pattern in match.items():
        if keyword in keys and keyword in COLUMNS:
            try:
                term = condition(COLUMNS[keyword], keyword, pattern, dialect)
            except PatternError as error:
                raise QueryError(str(error)) from error
            if term is not None:
                terms.append(term)
    return terms


def _archived(series_pk: Any) -> ColumnElement[bool]:
    return select(Instance.id).where(Instance.series_pk == series_pk).exists()


def _any_of(*branches: Select[Any]) -> ColumnElement[bool]:
    """Whether any of ``branches`` (each correlated to the study row) finds a row: one EXISTS
    over their UNION ALL, not an OR of EXISTS. PostgreSQL may answer an OR of EXISTS with
    hashed subplans that read every series and instance of the archive before the first study
    of a page (0.2 s at 100,000 studies); a set operation it cannot hash, so it asks each
    branch per study, on its indexes, and only for the studies the page reads."""
    correlated = [branch.correlate(Study) for branch in branches]
    if len(correlated) == 1:
        return correlated[0].exists()
    return union_all(*correlated).exists()


def _has_objects() -> ColumnElement[bool]:
    """A study is listed while it has an archived instance or an SR of RadDraft's."""
    return _any_of(
        select(Series.id).where(Series.study_pk == Study.id, _archived(Series.id)),
        select(Report.id)
        .join(ReportVersion, ReportVersion.report_pk == Report.id)
        .where(Report.study_pk == Study.id, ReportVersion.sr_sop_instance_uid.is_not(None)),
    )


def _gsps_count() -> Any:
    """How many GSPS a version made (the length of its JSON list; the same function name in
    SQLite and PostgreSQL)."""
    return func.coalesce(func.json_array_length(ReportVersion.gsps_sop_instance_uids), 0)


def _modalities_in_study(pattern: str, dialect: str) -> ColumnElement[bool] | None:
    """ModalitiesInStudy (PS3.18 Table 10.6.3-3): some series of the study has a matching
    modality, an archived one or RadDraft's SR or presentation states."""
    if pattern == "":
        return None
    versions = select(Report.id).join(ReportVersion, ReportVersion.report_pk == Report.id)
    branches: list[Select[Any]] = []
    for modality in uid_list(pattern) if "\\" in pattern else [pattern]:
        term = condition(Series.modality, "Modality", modality, dialect)
        if term is None:
            continue
        branches.append(
            select(Series.id).where(Series.study_pk == Study.id, _archived(Series.id), term)
        )
        if matches("Modality", SR_MODALITY, modality):
            has_sr = ReportVersion.sr_sop_instance_uid.is_not(None)
            branches.append(versions.where(Report.study_pk == Study.id, has_sr))
        if matches("Modality", PR_MODALITY, modality):
            branches.append(versions.where(Report.study_pk == Study.id, _gsps_count() > 0))
    return _any_of(*branches) if branches else None


def search(session: Session, settings: Settings, level: str, query: Query, limit: int) -> Found:
    """The page of ``level`` results (``study``, ``series``, ``instance``) that match."""
    dialect = dialect_of(session)
    if level == "study":
        return _search_studies(session, query, limit, dialect)
    extra = _outbox_hits(session, settings, level, query)
    if level == "series":
        return _search_series(session, query, limit, dialect, extra)
    return _search_instances(session, query, limit, dialect, extra)


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
        "InstanceAvailability": ONLINE,
    }


def _series_attributes(series: Series) -> dict[str, Any]:
    return {
        "SeriesInstanceUID": series.series_instance_uid,
        "Modality": series.modality,
        "SeriesNumber": series.series_number,
        "SeriesDescription": series.series_description,
    }


def _instance_attributes(instance: Instance) -> dict[str, Any]:
    return {
        "SOPClassUID": instance.sop_class_uid,
        "SOPInstanceUID": instance.sop_instance_uid,
        "InstanceNumber": instance.instance_number,
        "Rows": instance.rows,
        "Columns": instance.columns,
    }


def _search_studies(session: Session, query: Query, limit: int, dialect: str) -> Found:
    """Studies matched and paged on the study rows, then counted for the page alone."""
    where = [*_where(query.match, STUDY_KEYS, dialect), _has_objects()]
    try:
        modalities = _modalities_in_study(query.match.get("ModalitiesInStudy", ""), dialect)
    except PatternError as error:
        raise QueryError(str(error)) from error
    if modalities is not None:
        where.append(modalities)

    def chosen(*columns: Any) -> Select[Any]:
        return select(*columns).join(Patient, Study.patient_pk == Patient.id).where(*where)

    rows = session.execute(
        chosen(Study, Patient).order_by(Study.id).limit(limit + 1).offset(query.offset)
    ).all()
    more, rows = len(rows) > limit, rows[:limit]
    counts = _study_counts(session, [study.id for study, _ in rows])
    hits = []
    for study, patient in rows:
        modalities_found, n_series, n_instances, path = counts.get(study.id, (set(), 0, 0, None))
        attributes = _study_attributes(study, patient)
        attributes.update(
            ModalitiesInStudy=sorted(modalities_found - {""}),
            NumberOfStudyRelatedSeries=n_series,
            NumberOfStudyRelatedInstances=n_instances,
        )
        hits.append(Hit(attributes, path))
    return Found(hits, more)


def _study_counts(
    session: Session, study_pks: list[int]
) -> dict[int, tuple[set[str], int, int, Path | None]]:
    """Per study of a page: modalities, series and instances (archived and RadDraft's) and an
    archived file to read further attributes from. Two grouped statements for the page; its
    keys are bounded by the page size, not by the archive."""
    found: dict[int, tuple[set[str], int, int, Path | None]] = {}
    if not study_pks:
        return found
    archived = session.execute(
        select(
            Series.study_pk,
            Series.modality,
            func.count(distinct(Series.id)),
            func.count(Instance.id),
            func.min(Instance.path),
        )
        .join(Instance, Instance.series_pk == Series.id)
        .where(Series.study_pk.in_(study_pks))
        .group_by(Series.study_pk, Series.modality)
    )
    for study_pk, modality, n_series, n_instances, path in archived:
        modalities, series, instances, first = found.get(study_pk, (set(), 0, 0, None))
        found[study_pk] = (
            modalities | {modality},
            series + n_series,
            instances + n_instances,
            first or Path(path),
        )
    has_sr = ReportVersion.sr_sop_instance_uid.is_not(None)
    own = session.execute(
        select(
            Report.study_pk,
            func.count(distinct(case((has_sr, Report.id)))),
            func.count(ReportVersion.sr_sop_instance_uid),
            func.count(distinct(case((_gsps_count() > 0, Report.id)))),
            func.coalesce(func.sum(_gsps_count()), 0),
        )
        .join(ReportVersion, ReportVersion.report_pk == Report.id)
        .where(Report.study_pk.in_(study_pks))
        .group_by(Report.study_pk)
    )
    for study_pk, sr_series, srs, pr_series, prs in own:
        modalities, series, instances, first = found.get(study_pk, (set(), 0, 0, None))
        if srs:
            modalities = modalities | {SR_MODALITY}
        if prs:
            modalities = modalities | {PR_MODALITY}
        found[study_pk] = (
            modalities,
            series + int(sr_series) + int(pr_series),
            instances + int(srs) + int(prs),
            first,
        )
    return found


def _search_series(
    session: Session, query: Query, limit: int, dialect: str, extra: list[Hit]
) -> Found:
    """Archived series (those with instances) matched and paged in SQL, then a study's own
    RadDraft series after them."""
    where = [*_where(query.match, STUDY_KEYS + SERIES_KEYS, dialect), _archived(Series.id)]
    ids = (
        select(Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(*where)
    )

    def archived(offset: int, count: int) -> list[Hit]:
        page = list(session.scalars(ids.order_by(Series.id).limit(count).offset(offset)))
        if not page:
            return []
        # The page's series with their counts, then their studies and patients by key: three
        # lookups of at most a page each (one join of all four may read a whole table by hash).
        rows = session.execute(
            select(Series, func.count(Instance.id), func.min(Instance.path))
            .join(Instance, Instance.series_pk == Series.id)
            .where(Series.id.in_(page))
            .group_by(Series.id)
            .order_by(Series.id)
        ).all()
        studies = _by_key(session, Study, {series.study_pk for series, _, _ in rows})
        patients = _by_key(session, Patient, {s.patient_pk for s in studies.values()})
        hits = []
        for series, n_instances, path in rows:
            study = studies[series.study_pk]
            patient = patients[study.patient_pk]
            attributes = _study_attributes(study, patient)
            attributes.update(_series_attributes(series))
            attributes["NumberOfSeriesRelatedInstances"] = n_instances
            hits.append(Hit(attributes, Path(path) if path else None))
        return hits

    return _page(archived, lambda: count_rows(session, ids), extra, query.offset, limit)


def _by_key(session: Session, table: Any, keys: set[int]) -> dict[int, Any]:
    return {row.id: row for row in session.scalars(select(table).where(table.id.in_(keys)))}


def _search_instances(
    session: Session, query: Query, limit: int, dialect: str, extra: list[Hit]
) -> Found:
    """Archived instances matched and paged in SQL, then a study's own SR and GSPS."""
    where = _where(query.match, STUDY_KEYS + SERIES_KEYS + INSTANCE_KEYS, dialect)

    def chosen(*columns: Any) -> Select[Any]:
        return (
            select(*columns)
            .select_from(Instance)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .join(Patient, Study.patient_pk == Patient.id)
            .where(*where)
        )

    def archived(offset: int, count: int) -> list[Hit]:
        rows = session.execute(
            chosen(Instance, Series, Study, Patient)
            .order_by(Instance.id)
            .limit(count)
            .offset(offset)
        )
        hits = []
        for instance, series, study, patient in rows:
            attributes = _study_attributes(study, patient)
            attributes.update(_series_attributes(series))
            attributes.update(_instance_attributes(instance))
            hits.append(Hit(attributes, Path(instance.path)))
        return hits

    return _page(
        archived, lambda: count_rows(session, chosen(Instance.id)), extra, query.offset, limit
    )


def _page(
    archived: Callable[[int, int], list[Hit]],
    count_archived: Callable[[], int],
    extra: list[Hit],
    offset: int,
    limit: int,
) -> Found:
    """The page ``[offset, offset + limit)`` of the archived results followed by RadDraft's own
    objects (``extra``, one study's, so few). The archived rows are asked for one beyond the
    page; they are counted only when a page starts past all of them and objects of RadDraft's
    follow (a search within one study: a bounded count)."""
    rows = archived(offset, limit + 1)
    if len(rows) > limit:
        return Found(rows[:limit], more=True)
    before = offset + len(rows) if rows or not extra else count_archived()
    first = max(0, offset - before)
    room = limit - len(rows)
    return Found(rows + extra[first : first + room], more=first + room < len(extra))


# -- RadDraft's own objects of one study ----------------------------------------------------------


def _one_study(query: Query) -> str | None:
    """The study a series- or instance-level search is confined to, if one."""
    pattern = query.match.get("StudyInstanceUID", "")
    if not pattern or is_wildcard(pattern):
        return None
    try:
        uids = uid_list(pattern)
    except PatternError as error:
        raise QueryError(str(error)) from error
    return uids[0] if len(uids) == 1 else None


def _outbox_hits(session: Session, settings: Settings, level: str, query: Query) -> list[Hit]:
    """RadDraft's SR and GSPS of the one study searched, matched here (one study's reports are
    few), one hit per series or instance."""
    study_uid = _one_study(query)
    if study_uid is None:
        return []
    rows = _study_rows(session, study_uid)
    if not rows:
        return []
    objects = [
        o
        for o in _outbox_objects(session, settings, rows)
        if all(matches(k, o.attributes[k], p) for k, p in query.match.items() if k in o.attributes)
    ]
    if level == "instance":
        return [Hit(o.attributes, o.path) for o in objects]
    series: dict[str, list[DicomObject]] = {}
    for item in objects:
        series.setdefault(item.series_uid, []).append(item)
    return [
        Hit(
            {**members[0].attributes, "NumberOfSeriesRelatedInstances": len(members)},
            members[0].path,
        )
        for members in series.values()
    ]


# -- loading one study's objects (WADO-RS) --------------------------------------------------------


def _study_rows(session: Session, study_uid: str) -> dict[int, tuple[Study, Patient]]:
    query = (
        select(Study, Patient)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(Study.study_instance_uid == study_uid)
    )
    return {study.id: (study, patient) for study, patient in session.execute(query)}


def load_objects(session: Session, settings: Settings, study_uid: str) -> list[DicomObject]:
    """Every object of one study, archive then outbox (what WADO-RS retrieves)."""
    studies = _study_rows(session, study_uid)
    if not studies:
        return []
    found: list[DicomObject] = []
    rows = session.execute(
        select(Instance, Series)
        .join(Series, Instance.series_pk == Series.id)
        .where(Series.study_pk.in_(list(studies)))
        .order_by(Series.id, Instance.id)
    )
    for instance, series in rows:
        attributes = _study_attributes(*studies[series.study_pk])
        attributes.update(_series_attributes(series))
        attributes.update(_instance_attributes(instance))
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


# -- answering -----------------------------------------------------------------------------------


def level_keys(level: str, query: Query) -> list[str]:
    """The attributes a response at ``level`` carries: those PS3.18 Table 10.6.3-3..5 require
    (a series or instance result also carries its study's and series' attributes, as a search
    across studies must), those matched, and those included."""
    own = {
        "study": STUDY_KEYS + STUDY_COMPUTED,
        "series": STUDY_KEYS + SERIES_KEYS + SERIES_COMPUTED,
        "instance": STUDY_KEYS + SERIES_KEYS + INSTANCE_KEYS,
    }[level]
    return list(dict.fromkeys([*own, "InstanceAvailability", *query.match, *query.include]))


def answer(hit: Hit, level: str, query: Query, archive_dir: Path) -> Dataset:
    """One QIDO-RS result: the hit's attributes, then ``includefield`` ones from a header."""
    ds = Dataset()
    header: Dataset | None = None

    def read() -> Dataset:
        if hit.header_path is None:
            return Dataset()
        path = hit.header_path if hit.header_path.is_absolute() else archive_dir / hit.header_path
        try:
            return read_header(path)
        except (OSError, pydicom.errors.InvalidDicomError) as error:
            log.warning("QIDO-RS: header of %s unreadable: %s", path, error)
            return Dataset()

    for keyword in level_keys(level, query):
        if keyword in hit.attributes:
            setattr(ds, keyword, hit.attributes[keyword])
            continue
        header = header if header is not None else read()
        if keyword in header:
            ds[keyword] = header[keyword]
    if query.include_all:
        header = header if header is not None else read()
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

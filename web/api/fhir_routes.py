"""FHIR R4B read and search at ``/fhir/``: DiagnosticReport, ImagingStudy, Provenance.

A DiagnosticReport shows a report's latest *published* version (the AI draft, the signature,
each amendment), never a half-edited review state: the RIS sees what it was also sent. A
withdrawn draft (rejected, superseded) reads as ``entered-in-error``, as it was pushed.

Reads carry the version shown as ``meta.versionId`` and a weak ``ETag`` (FHIR R4 http.html "read",
"Managing Resource Contention"). Searches (FHIR R4 search.html) are matched, counted and paged in
SQL: ``_count`` (server default and maximum), ``_offset``, a correct ``Bundle.total``,
``self``/``next``/``previous`` links, and the page's resources built in a fixed number of
statements. A ``next`` link also carries ``_after``, the last row of its page, and a page asked for
with it starts past that row on the primary key; a ``previous`` link carries ``_before``, its page's
first row, and that page ends before it. Following the links through years of reports therefore
costs the same on the last page as on the first, where an ``_offset`` alone costs in proportion to
it (its rows are read and skipped). Whether a ``next`` or ``previous`` page exists is read with the
page (one row more than it holds), not reckoned from ``_offset`` and the total, so reports purged
meanwhile never hide the pages after them. ``_offset`` stays in the links for clients that page by
it. What a report shows (its status, when it last changed) is kept on its row
(:mod:`report_drafts.fhir_view`), so a search matches and pages on the report rows' indexes; the
total of a search by status alone, or of ImagingStudy without parameters, is a kept count, any other
total a count of the matching rows. A parameter the server does not support is ignored and left out
of the ``self`` link, or refused (400) under ``Prefer: handling=strict`` (search.html 3.1.1.4).
Every search runs in the thread pool under the request time limit (:mod:`web.api.query_limits`); one
record whose resources cannot be built is logged and left out, never failing the page.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from sqlalchemy import ColumnElement, Select, and_, exists, or_, select
from sqlalchemy.orm import QueryableAttribute, Session

import report_drafts as drafts
from dicom_listener import Patient, Study
from raddraft.db import count_rows
from raddraft.numbers import INTEGER_DIGITS, decimal
from raddraft.settings import Settings
from report_drafts import (
    PUBLISHED_ACTIONS,
    WITHDRAWN_BY,
    NotFound,
    Report,
    ReportVersion,
    capability_statement,
)
from web.api import query_limits
from web.api.auth import DbSession, Viewer

log = logging.getLogger(__name__)
router = APIRouter(prefix="/fhir", tags=["fhir"])

FHIR_JSON = "application/fhir+json"
#: Result parameters every search takes (FHIR R4 search.html 3.1.1.5).
PAGING = ("_count", "_offset", "_after", "_before")
#: The largest paging number taken: what :func:`raddraft.numbers.decimal` reads by default.
PAGING_MAX = 10**INTEGER_DIGITS - 1
#: The search parameters served, per resource type (and announced in the capability statement).
SEARCH_PARAMS: dict[str, tuple[str, ...]] = {
    "DiagnosticReport": (
        "_id",
        "identifier",
        "patient",
        "patient.identifier",
        "subject",
        "subject.identifier",
        "status",
        "date",
        "based-on",
        "_lastUpdated",
        "study",
    ),
    "ImagingStudy": (
        "_id",
        "identifier",
        "patient",
        "patient.identifier",
        "subject",
        "subject.identifier",
    ),
}
#: Parameters about the response's form, never about what matches: not refused, not echoed.
FORM_PARAMS = frozenset({"_format", "_pretty", "_summary"})
PREFIXES = ("eq", "ne", "ge", "gt", "le", "lt")
#: The patient as a reference (``Patient/<id>``) or by its identifier (``system|value``).
PATIENT_PARAMS = ("patient", "patient.identifier", "subject", "subject.identifier")
#: DiagnosticReport parameters matched on the study's row (the others on the report's).
STUDY_PARAMS = (*PATIENT_PARAMS, "identifier", "study", "based-on", "date")
#: A searchable column: a mapped attribute or an expression.
Column = ColumnElement[Any] | QueryableAttribute[Any]


class SearchError(ValueError):
    """A search the server refuses (a bad value, or an unknown parameter under strict)."""


def _json(resource: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = resource if isinstance(resource, str) else resource.model_dump_json()
    return Response(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def _outcome(status: int, text: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}],
    }
    return Response(json.dumps(body), status_code=status, media_type=FHIR_JSON)


def _dict(resource: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(resource.model_dump_json())
    return body


# -- which version a report shows ------------------------------------------------------------------


def _versions_shown(session: Session, report_pks: Sequence[int]) -> dict[int, ReportVersion]:
    """Per report: the version its DiagnosticReport shows, the withdrawal if it was withdrawn
    (what was pushed last), else its latest published version. One statement for all."""
    shown: dict[int, ReportVersion] = {}
    withdrawn: set[int] = set()
    rows = session.scalars(
        select(ReportVersion)
        .where(
            ReportVersion.report_pk.in_(report_pks),
            ReportVersion.action.in_((*PUBLISHED_ACTIONS, *WITHDRAWN_BY)),
        )
        .order_by(ReportVersion.report_pk, ReportVersion.number)
    )
    for row in rows:
        if row.action in WITHDRAWN_BY:
            if row.report_pk not in withdrawn:
                shown[row.report_pk] = row
                withdrawn.add(row.report_pk)
        elif row.report_pk not in withdrawn:
            shown[row.report_pk] = row
    return shown


def _published(session: Session, report_pks: Sequence[int]) -> dict[int, ReportVersion]:
    """Per report: its latest published version. One statement for all."""
    latest: dict[int, ReportVersion] = {}
    for row in session.scalars(
        select(ReportVersion)
        .where(
            ReportVersion.report_pk.in_(report_pks),
            ReportVersion.action.in_(PUBLISHED_ACTIONS),
        )
        .order_by(ReportVersion.report_pk, ReportVersion.number)
    ):
        latest[row.report_pk] = row
    return latest


def _with_meta(resource: dict[str, Any], version_id: str, updated: dt.datetime) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    meta.update(versionId=version_id, lastUpdated=updated.isoformat())
    return {**resource, "meta": meta}


def _report_resources(
    session: Session, reports: Sequence[Report]
) -> list[tuple[Report, dict[str, Any] | None]]:
    """Each report's DiagnosticReport as shown, with its version in ``meta`` (None when it
    cannot be built; logged where it failed)."""
    shown = _versions_shown(session, [r.id for r in reports])
    items = [(shown[r.id], WITHDRAWN_BY.get(shown[r.id].action)) for r in reports if r.id in shown]
    built = drafts.fhir_resources_for_page(
        session,
        [(version, f"{why}: {version.note}" if why else None) for version, why in items],
        only="DiagnosticReport",
    )
    by_report = {
        version.report_pk: (version, b) for (version, _), b in zip(items, built, strict=True)
    }
    out: list[tuple[Report, dict[str, Any] | None]] = []
    for report in reports:
        version, resources = by_report.get(report.id, (None, {}))
        resource = resources.get("DiagnosticReport") if resources else None
        if version is None or resource is None:
            out.append((report, None))
            continue
        out.append((report, _with_meta(_dict(resource), str(version.number), version.created_at)))
    return out


# -- reads -----------------------------------------------------------------------------------------


def _read(resource: dict[str, Any]) -> Response:
    etag = f'W/"{resource["meta"]["versionId"]}"'
    return _json(json.dumps(resource), headers={"ETag": etag})


@router.get("/metadata")
def metadata(request: Request) -> Response:
    """The CapabilityStatement (no authentication, as FHIR clients expect)."""
    return _json(
        capability_statement(
            software_version=_program_version(), base_url=str(request.base_url) + "fhir"
        )
    )


def _program_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("raddraft")
    except PackageNotFoundError:
        return "0"


@router.get("/DiagnosticReport/{resource_id}")
def read_report(resource_id: str, request: Request, session: DbSession, user: Viewer) -> Response:
    report = session.scalar(select(Report).where(Report.uid == resource_id))
    if report is None:
        raise NotFound(f"no DiagnosticReport {resource_id}")
    [(_, resource)] = _report_resources(session, [report])
    if resource is None:
        raise NotFound(f"report {report.uid} has no published version")
    return _read(resource)


@router.get("/ImagingStudy/{resource_id}")
def read_study(resource_id: str, request: Request, session: DbSession, user: Viewer) -> Response:
    study = _study_of_id(session, resource_id)
    found = _study_resources(session, [study]) if study is not None else []
    if not found or found[0] is None:
        raise NotFound(f"no ImagingStudy {resource_id}")
    return _read(found[0])


def _study_of_id(session: Session, resource_id: str) -> Study | None:
    """The study an ImagingStudy id names: its UID, or the id derived from an odd UID (only a
    UID with ``_`` needs one: the listener admits no other character FHIR ids lack)."""
    study = session.scalar(select(Study).where(Study.study_instance_uid == resource_id))
    if study is not None or not resource_id.startswith("uid-"):
        return study
    odd = session.scalars(
        select(Study).where(Study.study_instance_uid.like("%\\_%", escape="\\")).limit(10_000)
    )
    return next((s for s in odd if drafts.fhir_id_for(s.study_instance_uid) == resource_id), None)


def _study_resources(session: Session, studies: Sequence[Study]) -> list[dict[str, Any] | None]:
    """Each study's ImagingStudy, from its latest report with a published version."""
    reports = _latest_reports(session, [s.id for s in studies])
    published = _published(session, [r.id for r in reports.values()])
    items = [
        (study, published[reports[study.id].id])
        for study in studies
        if study.id in reports and reports[study.id].id in published
    ]
    built = drafts.fhir_resources_for_page(
        session, [(v, None) for _, v in items], only="ImagingStudy"
    )
    by_study: dict[int, dict[str, Any] | None] = {}
    for (study, version), resources in zip(items, built, strict=True):
        resource = resources.get("ImagingStudy")
        by_study[study.id] = (
            None
            if resource is None
            else _with_meta(
                _dict(resource),
                f"{reports[study.id].id}.{version.number}",
                version.created_at,
            )
        )
    return [by_study.get(s.id) for s in studies]


def _latest_reports(session: Session, study_pks: Sequence[int]) -> dict[int, Report]:
    latest: dict[int, Report] = {}
    for report in session.scalars(
        select(Report)
        .where(Report.study_pk.in_(study_pks), Report.fhir_status.is_not(None))
        .order_by(Report.study_pk, Report.id)
    ):
        latest[report.study_pk] = report
    return latest


@router.get("/Provenance/{resource_id}")
def read_provenance(
    resource_id: str, request: Request, session: DbSession, user: Viewer
) -> Response:
    """``<report uid>-v<n>``: who made version n (the AI device) and who verified it."""
    uid, _, number = resource_id.rpartition("-v")
    report = session.scalar(select(Report).where(Report.uid == uid))
    wanted = decimal(number)
    if report is None or wanted is None:
        raise NotFound(f"no Provenance {resource_id}")
    row = session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_pk == report.id, ReportVersion.number == wanted
        )
    )
    if row is None or row.action not in PUBLISHED_ACTIONS:
        raise NotFound(f"no Provenance {resource_id}")
    resource = drafts.fhir_resources(session, request.app.state.settings, row)["Provenance"]
    # A Provenance is written once and never changes: always its first version.
    return _read(_with_meta(_dict(resource), "1", row.created_at))


# -- search ----------------------------------------------------------------------------------------


def _search_params(request: Request, kind: str) -> tuple[dict[str, list[str]], list[str]]:
    """The supported parameters of a search (name -> values) and the names ignored; an
    unsupported one is refused under ``Prefer: handling=strict``."""
    supported: dict[str, list[str]] = {}
    ignored: list[str] = []
    for name, value in request.query_params.multi_items():
        if name in SEARCH_PARAMS[kind] or name in PAGING:
            supported.setdefault(name, []).append(value)
        elif name not in FORM_PARAMS:
            ignored.append(name)
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    if ignored and "handling=strict" in prefer.split(";"):
        raise SearchError(f"unsupported search parameters: {', '.join(sorted(set(ignored)))}")
    return supported, ignored


def _page(params: Mapping[str, list[str]], settings: Settings) -> tuple[int, Page]:
    """``_count`` (cut to the maximum), and where the page lies: ``_offset``, ``_after``,
    ``_before``."""

    def number(name: str, default: int) -> int:
        values = params.get(name)
        if not values:
            return default
        value = decimal(values[-1])
        if value is None:
            raise SearchError(
                f"{name} must be an integer from 0 to {PAGING_MAX}, not {values[-1]!r}"
            )
        return value

    count = min(number("_count", settings.fhir_default_count), settings.fhir_max_count)
    after = number("_after", 0) if params.get("_after") else None
    before = number("_before", 0) if params.get("_before") else None
    if after is not None and before is not None:
        raise SearchError("_after and _before name opposite ends of a page: give one")
    return count, Page(number("_offset", 0), after, before)


def _values(params: Mapping[str, list[str]], name: str) -> list[list[str]]:
    """Each occurrence of a parameter (AND) as its comma-separated values (OR)."""
    return [[v for v in value.split(",") if v] for value in params.get(name, [])]


def _reference_value(value: str) -> str:
    """``Patient/123`` or ``123``; ``system|value`` or ``urn:oid:1.2`` -> the bare value."""
    value = value.split("|")[-1]
    for prefix in ("Patient/", "ImagingStudy/", "ServiceRequest/", "urn:oid:"):
        value = value.removeprefix(prefix)
    return value


def _any_of(column: Column, values: list[str]) -> ColumnElement[bool]:
    return column.in_([_reference_value(v) for v in values])


def _prefixed(value: str) -> tuple[str, str]:
    return (value[:2], value[2:]) if value[:2] in PREFIXES else ("eq", value)


def _compare(column: Column, prefix: str, low: Any, high: Any) -> ColumnElement[bool]:
    """A FHIR date comparison (search.html 3.1.1.4.5) against the range ``[low, high)`` a
    value of some precision covers."""
    terms: dict[str, ColumnElement[bool]] = {
        "eq": and_(column >= low, column < high),
        "ne": or_(column < low, column >= high),
        "ge": column >= low,
        "gt": column >= high,
        "le": column < high,
        "lt": column < low,
    }
    return terms[prefix]


def _date_terms(values: list[list[str]]) -> list[ColumnElement[bool]]:
    """``date`` on the study date (DA ``YYYYMMDD``), to the day."""
    terms = []
    for alternatives in values:
        ors = []
        for item in alternatives:
            prefix, value = _prefixed(item)
            try:
                day = dt.date.fromisoformat(value[:10])
            except ValueError as error:
                raise SearchError(f"date must be YYYY-MM-DD, not {value!r}") from error
            low, high = day.strftime("%Y%m%d"), (day + dt.timedelta(days=1)).strftime("%Y%m%d")
            ors.append(_compare(Study.study_date, prefix, low, high))
        terms.append(or_(*ors))
    return terms


def _instant(value: str) -> tuple[dt.datetime, dt.datetime]:
    """The range ``[low, high)`` an R4 date, dateTime or instant search value covers."""
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            low = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return low, low + dt.timedelta(days=1)
        moment = dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise SearchError(f"_lastUpdated must be a date or instant, not {value!r}") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment, moment + dt.timedelta(seconds=1)


def _report_terms(params: Mapping[str, list[str]]) -> list[ColumnElement[bool]]:
    """The SQL terms of a DiagnosticReport search's parameters."""
    terms: list[ColumnElement[bool]] = []
    for name in PATIENT_PARAMS:
        terms += [_any_of(Patient.patient_id, v) for v in _values(params, name)]
    for values in _values(params, "identifier"):
        bare = [_reference_value(v) for v in values]
        sr = exists().where(
            ReportVersion.report_pk == Report.id, ReportVersion.sr_sop_instance_uid.in_(bare)
        )
        terms.append(or_(Report.uid.in_(bare), Study.accession_number.in_(bare), sr))
    terms += [_any_of(Report.uid, v) for v in _values(params, "_id")]
    terms += [_any_of(Study.study_instance_uid, v) for v in _values(params, "study")]
    terms += [_any_of(Study.accession_number, v) for v in _values(params, "based-on")]
    terms += [Report.fhir_status.in_(values) for values in _values(params, "status")]
    terms += _date_terms(_values(params, "date"))
    for values in _values(params, "_lastUpdated"):
        ors = []
        for item in values:
            prefix, value = _prefixed(item)
            low, high = _instant(value)
            ors.append(_compare(Report.fhir_updated_at, prefix, low, high))
        terms.append(or_(*ors))
    return terms


def _study_terms(session: Session, params: Mapping[str, list[str]]) -> list[ColumnElement[bool]]:
    terms: list[ColumnElement[bool]] = []
    for name in PATIENT_PARAMS:
        terms += [_any_of(Patient.patient_id, v) for v in _values(params, name)]
    for values in _values(params, "identifier"):
        bare = [_reference_value(v) for v in values]
        terms.append(or_(Study.study_instance_uid.in_(bare), Study.accession_number.in_(bare)))
    for values in _values(params, "_id"):
        # The id is the UID, or one derived from an odd UID (:func:`_study_of_id`).
        found = [_study_of_id(session, v) for v in values if v.startswith("uid-")]
        derived = [study.id for study in found if study is not None]
        terms.append(or_(Study.study_instance_uid.in_(values), Study.id.in_(derived)))
    return terms


@dataclass
class Page:
    """Where a search page lies: past the row ``after`` (the primary key, kept in ``next``
    links), or the rows just before the row ``before`` (kept in ``previous`` links), else
    ``offset`` rows in. Once read: whether matching rows lie after it (``more``; a ``next``
    link goes on past ``next_after``) and before it (``earlier``; a ``previous`` link ends
    before ``previous_before``, or pages by offset when that is None)."""

    offset: int
    after: int | None
    before: int | None = None
    more: bool = False
    earlier: bool = False
    next_after: int | None = None
    previous_before: int | None = None

    def rows(self, session: Session, ids: Select[Any], key: Any, count: int) -> list[int]:
        """The page's primary keys from the matching ``ids``, in ``key`` order. One row more
        than the page is read in its direction, and whether rows lie the other way is asked
        of the index: a link is offered exactly when there is a page behind it."""
        if self.before is not None:
            query = ids.where(key < self.before).order_by(key.desc()).limit(count + 1)
            found = list(session.scalars(query))
            self.earlier = len(found) > count
            found = found[:count][::-1]
            self.more = _any(session, ids.where(key >= self.before).order_by(key))
            self.next_after = found[-1] if found else max(self.before - 1, 0)
        else:
            query = ids.where(key > self.after) if self.after is not None else ids
            query = query.order_by(key).limit(count + 1)
            if self.after is None:
                query = query.offset(self.offset)
            found = list(session.scalars(query))
            self.more = len(found) > count
            found = found[:count]
            self.next_after = found[-1] if found else None
            if found:
                self.earlier = _any(session, ids.where(key < found[0]).order_by(key.desc()))
            else:  # past the end: back to where the rows are
                self.earlier = self.after is not None or self.offset > 0
        if found:
            self.previous_before = found[0]
        elif self.after is not None:
            self.previous_before = min(self.after + 1, PAGING_MAX)  # a link we accept
        return found


def _any(session: Session, ordered: Select[Any]) -> bool:
    """Whether ``ordered`` has a row: its first along the key's index (an EXISTS may be
    planned as a scan that finds no row until the table's end)."""
    return session.scalar(ordered.limit(1)) is not None


def _links(
    request: Request,
    kind: str,
    params: Mapping[str, list[str]],
    count: int,
    page: Page,
) -> list[dict[str, str]]:
    """``self`` (the parameters used, search.html 3.1.1.4), ``next`` and ``previous``. The
    links' ``_offset`` is where the page would be had nothing changed since the first page:
    for clients that show it; the key decides which rows a link reads."""
    base = f"{str(request.base_url).rstrip('/')}/fhir/{kind}"
    used = [(n, v) for n, vs in params.items() if n not in PAGING for v in vs]

    def url(at: int, key: tuple[str, int | None]) -> str:
        paging = [("_count", str(count)), ("_offset", str(at))]
        if key[1] is not None:
            paging.append((key[0], str(key[1])))
        return f"{base}?{urlencode([*used, *paging])}"

    offset = page.offset
    here = ("_after", page.after) if page.after is not None else ("_before", page.before)
    links = [{"relation": "self", "url": url(offset, here)}]
    if page.more and page.next_after is not None and count > 0:
        links.append({"relation": "next", "url": url(offset + count, ("_after", page.next_after))})
    if page.earlier and count > 0:
        previous = ("_before", page.previous_before)
        links.append({"relation": "previous", "url": url(max(0, offset - count), previous)})
    return links


def _bundle(
    entries: list[dict[str, Any]], base: str, total: int, links: list[dict[str, str]]
) -> Response:
    """The searchset Bundle. Written as JSON directly: each resource in it was built and
    validated by fhir.resources already (:func:`report_drafts.fhir_resources_for_page`), and
    validating the Bundle again would parse every resource a second time."""
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}{e['resourceType']}/{e['id']}",
                "resource": e,
                "search": {"mode": "match"},
            }
            for e in entries
        ],
    }
    return _json(json.dumps(bundle))


def _run_search(request: Request, session: Session, kind: str) -> Response:
    """A paged, time-limited search of ``kind``; 400 for a bad one, 503 past the limit."""
    settings: Settings = request.app.state.settings
    try:
        params, ignored = _search_params(request, kind)
        count, page = _page(params, settings)
        with query_limits.time_limit(session, settings.query_timeout_seconds):
            if kind == "DiagnosticReport":
                entries, total = _search_reports(session, params, count, page)
            else:
                entries, total = _search_studies(session, params, count, page)
    except SearchError as error:
        return _outcome(400, str(error))
    except query_limits.QueryTimeoutError as error:
        response = _outcome(503, str(error))
        response.headers["Retry-After"] = "60"
        return response
    if ignored:
        log.info("FHIR %s search ignored unsupported parameters %s", kind, sorted(set(ignored)))
    links = _links(request, kind, params, count, page)
    return _bundle(entries, str(request.base_url) + "fhir/", total, links)


def _kept_total(session: Session, params: Mapping[str, list[str]]) -> int | None:
    """The total of a search by status alone (or by nothing) from the kept counts, each
    ``status`` occurrence narrowing as its SQL term does; ``None`` when other parameters make
    the search count its matches."""
    if any(name not in PAGING and name != "status" for name in params):
        return None
    statuses: set[str] | None = None
    for values in _values(params, "status"):
        statuses = set(values) if statuses is None else statuses & set(values)
    return drafts.fhir_reports_shown(session, statuses)


def _search_reports(
    session: Session, params: Mapping[str, list[str]], count: int, page: Page
) -> tuple[list[dict[str, Any]], int]:
    """Reports FHIR shows (``Report.fhir_status`` set), matched on the report's row, and on its
    study's and patient's only when a parameter is about them."""
    ids = select(Report.id).where(Report.fhir_status.is_not(None), *_report_terms(params))
    if any(name in STUDY_PARAMS for name in params):
        ids = ids.join(Study, Study.id == Report.study_pk).join(
            Patient, Patient.id == Study.patient_pk
        )
    total = _kept_total(session, params)
    if total is None:
        total = count_rows(session, ids)
    found = page.rows(session, ids, Report.id, count)
    reports = list(session.scalars(select(Report).where(Report.id.in_(found)).order_by(Report.id)))
    entries = []
    for report, resource in _report_resources(session, reports):
        if resource is None:
            log.error("FHIR search: DiagnosticReport %s left out (see above)", report.uid)
            continue
        entries.append(resource)
    return entries, total


def _search_studies(
    session: Session, params: Mapping[str, list[str]], count: int, page: Page
) -> tuple[list[dict[str, Any]], int]:
    """Studies with a report FHIR shows; without parameters the total is the kept count."""
    with_report = exists().where(Report.study_pk == Study.id, Report.fhir_status.is_not(None))
    terms = _study_terms(session, params)
    ids = select(Study.id).where(with_report, *terms)
    if any(name in PATIENT_PARAMS for name in params):
        ids = ids.join(Patient, Patient.id == Study.patient_pk)
    if any(name not in PAGING for name in params):
        total = count_rows(session, ids)
    else:
        total = drafts.fhir_studies_shown(session)
    found = page.rows(session, ids, Study.id, count)
    studies = list(session.scalars(select(Study).where(Study.id.in_(found)).order_by(Study.id)))
    entries = []
    for study, resource in zip(studies, _study_resources(session, studies), strict=True):
        if resource is None:
            log.error("FHIR search: ImagingStudy of %s left out", study.study_instance_uid)
            continue
        entries.append(resource)
    return entries, total


@router.get("/DiagnosticReport")
def search_reports(request: Request, session: DbSession, user: Viewer) -> Response:
    """Search by identifier (accession, SR UID, id), patient/subject, status, date (study
    date), based-on (the order's accession), _lastUpdated, study; paged by _count, _offset and
    the links' _after and _before."""
    return _run_search(request, session, "DiagnosticReport")


@router.get("/ImagingStudy")
def search_studies(request: Request, session: DbSession, user: Viewer) -> Response:
    """Search by identifier (Study Instance UID or accession) and patient/subject; paged."""
    return _run_search(request, session, "ImagingStudy")

# FHIR models type every element Optional; the assertions below are the None checks.
# mypy: disable-error-code="union-attr,index"
"""FHIR search and read as a RIS uses them (FHIR R4 search.html, http.html): odd DICOM UIDs
never break a search, pages are bounded with a true total and next/previous links and cost
the same statements whatever the archive holds, reads carry their version (ETag,
meta.versionId), the parameters a RIS sends are honoured and the rest ignored or, under
``Prefer: handling=strict``, refused. Every resource read is validated with fhir.resources
R4B."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.provenance import Provenance
from sqlalchemy import event, text, update
from sqlalchemy.engine import Engine

from dicom_listener import Instance
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts.tables import Report
from tests.drafts.conftest import auth
from tests.drafts.helpers import make_draft
from web.api import create_app, query_limits

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}\Z")


def _bundle(client: TestClient, token: str, query: str, **headers: str) -> Bundle:
    response = client.get(f"/fhir/{query}", headers={**auth(token), **headers})
    assert response.status_code == 200, response.text
    return Bundle.model_validate_json(response.content)


def _ids(bundle: Bundle) -> list[str]:
    return [str(e.resource.id) for e in bundle.entry or []]


def _link(bundle: Bundle, relation: str) -> str | None:
    return next((str(k.url) for k in bundle.link or [] if k.relation == relation), None)


def test_an_odd_uid_never_breaks_a_search_and_every_id_is_a_fhir_id(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    """A study UID and a SOP Instance UID with ``_`` (the listener admits it; FHIR ids do
    not): the search still answers every report, the study's ImagingStudy has a derived id
    that reads back, the odd image is left out of it."""
    token = tokens["rad"]
    _plain, plain = make_draft(engine, settings, patient_id="PU1", images=2)
    with session_scope(engine) as session:
        session.execute(
            update(Instance)
            .where(Instance.sop_instance_uid == plain.sop_instance_uids[1])
            .values(sop_instance_uid="1.2.826.0.1.3680043.9.7.abc_1")
        )
    _odd, odd = make_draft(
        engine, settings, patient_id="PU2", study_uid="1.2.826.0.1.3680043.9.7_2"
    )
    reports = _bundle(client, token, "DiagnosticReport")
    studies = _bundle(client, token, "ImagingStudy")
    assert (reports.total, len(_ids(reports))) == (2, 2)
    assert (studies.total, len(_ids(studies))) == (2, 2)
    for entry in [*reports.entry, *studies.entry]:
        assert FHIR_ID.match(str(entry.resource.id))
    by_uid = {s.resource.identifier[0].value: s.resource for s in studies.entry}
    odd_study = by_uid[f"urn:oid:{odd.study_instance_uid}"]
    assert odd_study.id.startswith("uid-")
    again = client.get(f"/fhir/ImagingStudy/{odd_study.id}", headers=auth(token))
    assert ImagingStudy.model_validate_json(again.content).id == odd_study.id
    assert _ids(_bundle(client, token, f"ImagingStudy?_id={odd_study.id}")) == [odd_study.id]
    plain_study = by_uid[f"urn:oid:{plain.study_instance_uid}"]
    listed = [i.uid for s in plain_study.series for i in s.instance]
    assert listed == [plain.sop_instance_uids[0]]  # the odd image is left out, logged
    [report] = [e.resource for e in reports.entry if e.resource.subject.identifier.value == "PU2"]
    assert report.imagingStudy[0].reference == f"ImagingStudy/{odd_study.id}"


def test_searches_are_paged_with_a_true_total_and_links(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    token = tokens["rad"]
    for n in range(5):
        make_draft(engine, settings, patient_id=f"PP{n}", accession=f"ACP{n}")
    first = _bundle(client, token, "DiagnosticReport?_count=2&status=preliminary")
    assert first.total == 5 and len(first.entry) == 2
    assert _link(first, "previous") is None
    seen = _ids(first)
    page = first
    for _ in range(5):  # bounded: 3 pages of 2
        following = _link(page, "next")
        if following is None:
            break
        assert "status=preliminary" in following
        page = _bundle(client, token, following.split("/fhir/", 1)[1])
        assert page.total == 5 and _link(page, "previous") is not None
        seen += _ids(page)
    assert len(seen) == 5 and len(set(seen)) == 5
    studies = _bundle(client, token, "ImagingStudy?_count=3")
    assert studies.total == 5 and len(studies.entry) == 3 and _link(studies, "next")
    capped = _bundle(client, token, "DiagnosticReport?_count=100000")
    assert len(capped.entry) == 5  # _count beyond the maximum is cut to it, not refused
    bad = client.get("/fhir/DiagnosticReport?_count=lots", headers=auth(token))
    assert bad.status_code == 400


@pytest.mark.parametrize("kind", ["DiagnosticReport", "ImagingStudy"])
def test_following_next_starts_past_the_last_row_and_reads_none_before_it(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient, kind: str
) -> None:
    """A ``next`` link carries ``_after`` (its page's last row): the page it asks for is read
    from the primary key past that row, with no OFFSET (which reads and skips every earlier
    row: the last page of years of reports cost as much as all of them). The pages followed
    that way are the pages ``_offset`` gives, and ``previous`` links (``_before``) lead back
    through them by key."""
    token = tokens["rad"]
    for n in range(5):
        make_draft(engine, settings, patient_id=f"PK{n}", accession=f"ACK{n}")
    by_offset = [_ids(_bundle(client, token, f"{kind}?_count=2&_offset={at}")) for at in (0, 2, 4)]
    page = _bundle(client, token, f"{kind}?_count=2")
    followed = [_ids(page)]
    while (following := _link(page, "next")) is not None:
        assert "_after=" in following
        with statements_and_parameters() as seen:
            page = _bundle(client, token, following.split("/fhir/", 1)[1])
        paging = [(sql, params) for sql, params in seen if "LIMIT" in sql.upper()]
        assert paging
        for sql, params in paging:
            assert ".id > " in sql or ".id < " in sql, sql  # the page, or the look back
            if "OFFSET" in sql.upper():  # SQLite writes LIMIT ? OFFSET ? for any LIMIT
                assert isinstance(params, tuple) and params[-1] == 0, (sql, params)
        assert page.total == 5 and _link(page, "previous") is not None
        followed.append(_ids(page))
        assert len(followed) <= 3
    assert followed == by_offset
    # And back: each ``previous`` link carries ``_before`` (its page's first row) and reads the
    # rows before it in reverse key order, again with nothing skipped.
    back = [_ids(page)]
    while (preceding := _link(page, "previous")) is not None:
        with statements_and_parameters() as seen:
            page = _bundle(client, token, preceding.split("/fhir/", 1)[1])
        if "_before=" in preceding:
            paging = [sql for sql, _ in seen if "LIMIT" in sql.upper()]
            assert paging and all(".id < " in sql or ".id >= " in sql for sql in paging), paging
            assert any(".id < " in sql for sql in paging), paging
        back.append(_ids(page))
        assert len(back) <= 3
    assert back == by_offset[::-1]
    by_offset_last = _bundle(client, token, f"{kind}?_count=2&_offset=4")
    assert "_before=" in str(_link(by_offset_last, "previous"))
    too_big = "_before=" + "9" * 10
    for hostile in ("_after=-1", "_before=x", "_after=2&_before=9", "_after=%C2%B2", too_big):
        bad = client.get(f"/fhir/{kind}?{hostile}", headers=auth(token))
        assert bad.status_code == 400


def test_reports_gone_before_the_page_never_hide_the_pages_after_it(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    """A RIS follows ``next`` while older reports leave the search (purged, no longer shown):
    whether another page follows is read with the page, not reckoned from the link's
    ``_offset`` against the now smaller total, so every report still shown is reached."""
    token = tokens["rad"]
    reports = [
        make_draft(engine, settings, patient_id=f"PG{n}", accession=f"ACG{n}") for n in range(8)
    ]
    query = "DiagnosticReport?_count=2&_lastUpdated=ge2000-01-01"  # a counted total
    page = _bundle(client, token, query)
    seen = _ids(page)
    page = _bundle(client, token, str(_link(page, "next")).split("/fhir/", 1)[1])
    seen += _ids(page)
    with session_scope(engine) as session:  # the four read so far leave the search
        session.execute(
            update(Report)
            .where(Report.id.in_([report_id for report_id, _ in reports[:4]]))
            .values(fhir_status=None)
        )
    while (following := _link(page, "next")) is not None:
        page = _bundle(client, token, following.split("/fhir/", 1)[1])
        assert page.total == 4
        seen += _ids(page)
        assert len(seen) <= 8
    assert len(seen) == 8 and len(set(seen)) == 8
    # Back from the last page: the page before it, then none (the rest left the search).
    back = _bundle(client, token, str(_link(page, "previous")).split("/fhir/", 1)[1])
    assert _ids(back) == seen[4:6] and _link(back, "previous") is None
    # A previous link whose rows have all gone since leads to an empty page that links on.
    with session_scope(engine) as session:
        session.execute(
            update(Report)
            .where(Report.id.in_([report_id for report_id, _ in reports[4:6]]))
            .values(fhir_status=None)
        )
    emptied = _bundle(client, token, str(_link(page, "previous")).split("/fhir/", 1)[1])
    assert _ids(emptied) == [] and _link(emptied, "previous") is None
    onward = _bundle(client, token, str(_link(emptied, "next")).split("/fhir/", 1)[1])
    assert _ids(onward) == seen[6:]
    # Before the first row there is nothing; its next link is still one the server takes.
    nothing = _bundle(client, token, f"{query}&_before=0")
    assert _ids(nothing) == []
    assert _ids(_bundle(client, token, str(_link(nothing, "next")).split("/fhir/", 1)[1]))


@contextmanager
def statements_and_parameters() -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        seen.append((str(args[2]), args[3]))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


@contextmanager
def counted_statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(str(args[2]))

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def test_a_search_page_costs_the_same_statements_at_any_size(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    token = tokens["rad"]

    def statements() -> dict[str, int]:
        counts = {}
        for query in ("DiagnosticReport?_count=50", "ImagingStudy?_count=50"):
            with counted_statements() as seen:
                bundle = _bundle(client, token, query)
            counts[query] = len(seen)
            assert len(bundle.entry) == bundle.total
        return counts

    for n in range(2):
        make_draft(engine, settings, patient_id=f"PQ{n}", images=2)
    few = statements()
    for n in range(2, 7):
        make_draft(engine, settings, patient_id=f"PQ{n}", images=2)
    assert statements() == few


def test_reads_carry_their_version(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    token = tokens["rad"]
    report_pk, study = make_draft(engine, settings)
    uid = client.get(f"/api/reports/{report_pk}", headers=auth(token)).json()["uid"]
    draft = client.get(f"/fhir/DiagnosticReport/{uid}", headers=auth(token))
    assert draft.headers["ETag"] == 'W/"1"'
    assert DiagnosticReport.model_validate_json(draft.content).meta.versionId == "1"
    client.post(
        f"/api/reports/{report_pk}/sign",
        json={"expected_version": 1, "edit_reason": "none"},
        headers=auth(token),
    )
    signed = client.get(f"/fhir/DiagnosticReport/{uid}", headers=auth(token))
    resource = DiagnosticReport.model_validate_json(signed.content)
    assert resource.status == "final"
    assert signed.headers["ETag"] == f'W/"{resource.meta.versionId}"' != 'W/"1"'
    assert resource.meta.lastUpdated is not None
    imaging = client.get(f"/fhir/ImagingStudy/{study.study_instance_uid}", headers=auth(token))
    version = ImagingStudy.model_validate_json(imaging.content).meta.versionId
    assert imaging.headers["ETag"] == f'W/"{version}"'
    provenance = client.get(f"/fhir/Provenance/{uid}-v1", headers=auth(token))
    assert Provenance.model_validate_json(provenance.content).meta.versionId == "1"
    assert provenance.headers["ETag"] == 'W/"1"'
    for odd in ("\u00b2", "9" * 14, "9" * 5000):  # "²"; past an SQL INTEGER; past int()'s digits
        missing = client.get(f"/fhir/Provenance/{uid}-v{odd}", headers=auth(token))
        assert missing.status_code == 404, missing.text
    # In a search too.
    [entry] = _bundle(client, token, "DiagnosticReport").entry
    assert entry.resource.meta.versionId == resource.meta.versionId


def test_the_parameters_a_ris_sends(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    token = tokens["rad"]
    first_pk, _ = make_draft(engine, settings, patient_id="PR1", accession="ACR1")
    make_draft(engine, settings, patient_id="PR2", accession="ACR2")
    first = client.get(f"/api/reports/{first_pk}", headers=auth(token)).json()["uid"]

    def found(query: str, **headers: str) -> list[str]:
        return _ids(_bundle(client, token, f"DiagnosticReport?{query}", **headers))

    assert found("identifier=ACR1") == [first]
    assert found("identifier=NOSUCH") == []  # not ignored: nothing matches
    assert found("based-on=ServiceRequest/ACR1") == [first]
    assert found("subject=Patient/PR1") == [first]
    assert found("patient=PR1,PR2&status=final") == []
    assert len(found("status=preliminary")) == 2
    assert len(found("_lastUpdated=ge2000-01-01")) == 2
    assert found("_lastUpdated=lt2000-01-01") == []
    assert len(found("date=2026-11-20")) == 2
    # An unsupported parameter: ignored, and not in the self link.
    lenient = _bundle(client, token, "DiagnosticReport?colour=blue&patient=PR1")
    assert _ids(lenient) == [first]
    assert "colour" not in _link(lenient, "self") and "patient=PR1" in _link(lenient, "self")
    strict = client.get(
        "/fhir/DiagnosticReport?colour=blue",
        headers={**auth(token), "Prefer": "handling=strict"},
    )
    assert strict.status_code == 400 and "colour" in strict.text
    assert found(f"_id={first}") == [first]
    assert found("patient.identifier=urn:raddraft:patient-id|PR1") == [first]
    [study] = _bundle(client, token, "ImagingStudy?identifier=ACR2&patient=PR2").entry
    assert _ids(_bundle(client, token, f"ImagingStudy?_id={study.resource.id}")) == [
        study.resource.id
    ]


def test_the_capability_statement_announces_what_search_serves(client: TestClient) -> None:
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    from web.api.fhir_routes import SEARCH_PARAMS

    capability = CapabilityStatement.model_validate_json(client.get("/fhir/metadata").content)
    for resource in capability.rest[0].resource:
        announced = {p.name for p in resource.searchParam}
        assert announced <= set(SEARCH_PARAMS[resource.type]), resource.type
        assert resource.versioning == "versioned"


def test_a_search_past_its_time_limit_is_stopped_with_503(
    engine: Engine,
    settings: Settings,
    tokens: dict[str, str],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_draft(engine, settings)
    on_postgres = database_url.startswith("postgresql")
    if not on_postgres:
        # SQLite's progress handler looks at the clock every step; the deadline is past.
        monkeypatch.setattr(query_limits, "SQLITE_STEPS", 1)
    short = settings.model_copy(update={"query_timeout_seconds": 0.5 if on_postgres else 1e-9})
    with TestClient(create_app(short)) as limited, engine.connect() as blocker:
        if on_postgres:
            # A lock held elsewhere keeps the search waiting: statement_timeout ends the wait.
            blocker.execute(text("LOCK TABLE reports IN ACCESS EXCLUSIVE MODE"))
        answer = limited.get("/fhir/DiagnosticReport", headers=auth(tokens["rad"]))
        blocker.rollback()
    assert answer.status_code == 503
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert "RADDRAFT_QUERY_TIMEOUT_SECONDS" in answer.text
    assert answer.headers["Retry-After"]

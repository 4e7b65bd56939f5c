"""QIDO-RS under hostile and large queries (PS3.18 8.3.4, PS3.4 C.2.2.2): a wildcard cannot
freeze the web process, matching follows the standard's case rules with SQL's own wildcards
escaped, every page is bounded by the server and answered in a fixed number of statements,
each level carries the attributes PS3.18 Table 10.6.3-3..5 require, and a search that runs
too long is stopped with a clear 503."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from sqlalchemy import event, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dicom_listener import Patient
from raddraft.db import session_scope
from raddraft.settings import Settings
from tests.drafts.conftest import ArchivedStudy, archive_study
from tests.drafts.helpers import make_draft
from tests.pages.conftest import LiveServer
from web import create_web_app
from web.api import query_limits

STUDY_UID = "0020000D"
PATIENT_ID = "00100020"


def _client(web: LiveServer, token: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{web.url}/dicomweb", headers={"Authorization": f"Bearer {token}"})


def _get(web: LiveServer, token: str, path: str, timeout: float = 30, **params: str) -> Any:
    return httpx.get(
        f"{web.url}/dicomweb{path}",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def _name_patient(engine: Engine, patient_id: str, name: str) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(Patient).where(Patient.patient_id == patient_id).values(patient_name=name)
        )


def test_a_hostile_wildcard_neither_freezes_the_search_nor_the_health_check(
    engine: Engine, settings: Settings, web: LiveServer, tokens: dict[str, str]
) -> None:
    """Thirty ``*`` against a 300-letter name: a backtracking regular expression would try
    every split (minutes, holding the interpreter); SQL LIKE gives up at once."""
    archive_study(engine, settings, patient_id="LONG1")
    _name_patient(engine, "LONG1", "A" * 300)
    hostile = "*A" * 30 + "*B"
    answers: dict[str, Any] = {}

    def heavy() -> None:
        answers["miss"] = _get(web, tokens["reader"], "/studies", 60, PatientName=hostile)

    worker = threading.Thread(target=heavy)
    worker.start()
    try:
        for _ in range(5):  # the health check answers within 1 s while the search runs
            assert httpx.get(f"{web.url}/healthz", timeout=1.0).status_code == 200
    finally:
        worker.join(90)
    assert not worker.is_alive()
    assert answers["miss"].status_code == 200
    assert answers["miss"].json() == []
    hit = _get(web, tokens["reader"], "/studies", PatientName="*A" * 30 + "*")
    assert [s[PATIENT_ID]["Value"] for s in hit.json()] == [["LONG1"]]


def test_matching_escapes_sql_wildcards_and_keeps_the_case_rules(
    engine: Engine, settings: Settings, web: LiveServer, tokens: dict[str, str]
) -> None:
    for patient_id in ("PID_1", "PIDX1", "P%Q"):
        archive_study(engine, settings, patient_id=patient_id)
    reader = _client(web, tokens["reader"])

    def ids(**filters: str) -> set[str]:
        found = reader.search_for_studies(search_filters=filters)
        return {f[PATIENT_ID]["Value"][0] for f in found}

    assert ids(PatientID="PID_*") == {"PID_1"}  # "_" is a character, not SQL's wildcard
    assert ids(PatientID="PID?1") == {"PID_1", "PIDX1"}
    assert ids(PatientID="P%*") == {"P%Q"}
    assert ids(PatientID="pid_*") == set()  # case-sensitive but for PN (PS3.4 C.2.2.2.1)
    assert ids(PatientID="PID_1") == {"PID_1"}
    assert len(ids(PatientName="doe^JANE")) == 3  # PN: case-insensitive
    assert len(ids(PatientName="d*^j?ne")) == 3
    assert ids(PatientID="PID_1", PatientName="nobody*") == set()
    # A number matched against a number column: "²" and 1,000 digits match nothing, no 500
    # (longer values are refused by the query's length bound).
    for odd in ("\u00b2", "9" * 14, "9" * 1000):
        assert reader.search_for_instances(search_filters={"Rows": odd}) == []


@pytest.fixture
def paged(settings: Settings) -> Iterator[LiveServer]:
    """The web app with small pages: 2 by default, at most 3."""
    small = settings.model_copy(update={"qido_default_limit": 2, "qido_max_limit": 3})
    with LiveServer(create_web_app(small)) as server:
        yield server


TRUNCATED = "The number of results exceeded the maximum supported by the server"


def test_every_qido_page_is_bounded_and_a_cut_page_says_so(
    engine: Engine, settings: Settings, paged: LiveServer, tokens: dict[str, str]
) -> None:
    made = [archive_study(engine, settings, patient_id=f"PB{n}", images=2) for n in range(3)]
    token = tokens["reader"]
    studies = _get(paged, token, "/studies")
    assert [s[STUDY_UID]["Value"][0] for s in studies.json()] == [
        m.study_instance_uid for m in made[:2]
    ]
    assert TRUNCATED in studies.headers["Warning"]  # the server's default cut it
    asked_too_many = _get(paged, token, "/instances", limit="100")
    assert len(asked_too_many.json()) == 3
    assert TRUNCATED in asked_too_many.headers["Warning"]
    own_limit = _get(paged, token, "/series", limit="2")
    assert len(own_limit.json()) == 2
    assert "Warning" not in own_limit.headers  # the client's own limit: no warning
    last = _get(paged, token, "/instances", limit="3", offset="3")
    assert len(last.json()) == 3 and "Warning" not in last.headers
    assert _get(paged, token, "/instances", offset="6").json() == []
    assert _get(paged, token, "/studies", limit="x").status_code == 400


@contextmanager
def counted_statements() -> Iterator[list[str]]:
    """Every SQL statement any engine of this process runs meanwhile."""
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(str(args[2]))

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def _binds(statement: str) -> int:
    """Bind parameters in a statement as the driver gets it (``?`` or ``%(name)s``)."""
    return statement.count("?") + statement.count("%(")


def test_statements_per_page_do_not_grow_with_the_archive(
    engine: Engine, settings: Settings, web: LiveServer, tokens: dict[str, str]
) -> None:
    """A page costs the same statements, each with the same bind parameters, at 3 studies as
    at 8 (with RadDraft's SR and GSPS beside the images): nothing is per row, and no ``IN``
    list grows with the archive (both archives hold more than a page and its probe row)."""
    token = tokens["reader"]
    paths = ("/studies", "/series", "/instances")

    def statements() -> dict[str, tuple[int, int]]:
        counts = {}
        for path in paths:
            with counted_statements() as seen:
                answer = _get(web, token, path, limit="2")
            assert answer.status_code == 200
            assert len(answer.json()) == 2  # never more than the page
            counts[path] = (len(seen), max(_binds(s) for s in seen))
        return counts

    for n in range(3):
        make_draft(engine, settings, patient_id=f"PS{n}", images=2)
    few = statements()
    for n in range(3, 8):
        make_draft(engine, settings, patient_id=f"PS{n}", images=2)
    many = statements()
    assert many == few
    assert len(_get(web, token, "/instances").json()) == 16


def test_each_level_carries_the_attributes_ps3_18_requires(
    engine: Engine, settings: Settings, web: LiveServer, tokens: dict[str, str]
) -> None:
    """Instance results carry their series' Modality and Series Number (and their study's
    attributes, for a search across studies); every level says InstanceAvailability."""
    study: ArchivedStudy = archive_study(engine, settings, patient_id="PR1", images=2)
    reader = _client(web, tokens["reader"])
    instances = reader.search_for_instances()
    assert len(instances) == 2
    for found in instances:
        assert found["00080060"]["Value"] == ["DX"]  # Modality
        assert "00200011" in found  # Series Number
        assert "0020000E" in found and "00080018" in found and "00080016" in found
        assert found["00080056"]["Value"] == ["ONLINE"]
        assert found[STUDY_UID]["Value"] == [study.study_instance_uid]
        assert found[PATIENT_ID]["Value"] == ["PR1"]
    [series] = reader.search_for_series()
    assert series["00201209"]["Value"] == [2]  # NumberOfSeriesRelatedInstances
    assert series[PATIENT_ID]["Value"] == ["PR1"]
    [one] = reader.search_for_studies()
    assert one["00080056"]["Value"] == ["ONLINE"]
    assert one["00201206"]["Value"] == [1]  # NumberOfStudyRelatedSeries


def test_a_search_past_its_time_limit_is_stopped_with_503(
    engine: Engine,
    settings: Settings,
    tokens: dict[str, str],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive_study(engine, settings, patient_id="PT1")
    on_postgres = database_url.startswith("postgresql")
    if not on_postgres:
        # SQLite's progress handler looks at the clock every step; the deadline is past.
        monkeypatch.setattr(query_limits, "SQLITE_STEPS", 1)
    limit = 0.5 if on_postgres else 1e-9
    short = settings.model_copy(update={"query_timeout_seconds": limit})
    with LiveServer(create_web_app(short)) as server, engine.connect() as blocker:
        if on_postgres:
            # A lock held elsewhere keeps the search waiting: statement_timeout ends the wait.
            blocker.execute(text("LOCK TABLE studies IN ACCESS EXCLUSIVE MODE"))
        answer = _get(server, tokens["reader"], "/studies", timeout=30)
        blocker.rollback()
    assert answer.status_code == 503
    assert "RADDRAFT_QUERY_TIMEOUT_SECONDS" in answer.json()["detail"]
    assert answer.headers["Retry-After"]


def test_time_limit_stops_a_long_statement(engine: Engine) -> None:
    long_count = text(
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 1000000000) "
        "SELECT count(*) FROM c"
    )
    with Session(engine) as session:
        with (
            pytest.raises(query_limits.QueryTimeoutError),
            query_limits.time_limit(session, 0.3),
        ):
            session.execute(long_count)
        # The session goes on after it (the limit ended with the transaction).
        assert session.execute(text("SELECT 1")).scalar() == 1


def test_the_searches_use_indexes(engine: Engine, database_url: str) -> None:
    """The terms QIDO-RS and FHIR searches add can be answered from an index (on PostgreSQL
    with sequential scans discouraged, so the tiny test tables do not hide it)."""
    from sqlalchemy import select

    from dicom_listener import Study
    from web.dicomweb import catalog

    on_postgres = database_url.startswith("postgresql")
    terms = {
        "ix_studies_study_date": {"StudyDate": "20261101-20261130"},
        "ix_studies_accession_number": {"AccessionNumber": "ACC1"},
        "studies": {"StudyInstanceUID": "1.2.3"},  # its unique constraint's index
    }
    explain = "EXPLAIN" if on_postgres else "EXPLAIN QUERY PLAN"
    with Session(engine) as session:
        if on_postgres:
            session.execute(text("SET LOCAL enable_seqscan = off"))
        for index, match in terms.items():
            query = select(Study.id).where(
                *catalog._where(match, catalog.STUDY_KEYS, engine.dialect.name)
            )
            sql = query.compile(engine, compile_kwargs={"literal_binds": True})
            rows = session.execute(text(f"{explain} {sql}")).all()
            plan = "\n".join(str(row[-1]) for row in rows)
            assert "INDEX" in plan.upper() and index in plan, plan


def test_a_page_runs_on_from_the_archive_into_raddrafts_own_objects() -> None:
    """Every window over archived results followed by RadDraft's own objects, against slicing
    the whole list; the archive is counted only when a page starts past all of it."""
    from web.dicomweb.catalog import Hit, _page

    for n_archived in range(7):
        for n_extra in range(4):
            archived = [Hit({"n": i}, None) for i in range(n_archived)]
            extra = [Hit({"n": n_archived + i}, None) for i in range(n_extra)]
            whole = archived + extra
            for limit in range(1, 5):
                for offset in range(len(whole) + 3):
                    counted: list[int] = []

                    def count(counted: list[int] = counted, total: int = n_archived) -> int:
                        counted.append(1)
                        return total

                    def rows(o: int, n: int, hits: list[Hit] = archived) -> list[Hit]:
                        return hits[o : o + n]

                    found = _page(rows, count, extra, offset, limit)
                    case = (n_archived, n_extra, limit, offset)
                    assert found.hits == whole[offset : offset + limit], case
                    assert found.more == (offset + limit < len(whole)), case
                    if counted:
                        assert offset >= n_archived and n_extra, case

# FHIR models type every element Optional; the assertions below are the None checks.
# mypy: disable-error-code="union-attr,index"
"""What FHIR shows of a report is kept on its row as versions are written (issue 23), on
SQLite and PostgreSQL: ``Report.fhir_status`` follows the draft, edits (no change), the
signature, amendment, correction, rejection and supersession exactly as the versions say it
(what the searches asked every report's versions before), ``fhir_updated_at`` moves only with
what FHIR shows, the kept totals equal a recount of the rows, and every page of a search, kept
total or counted, carries the same true total. On PostgreSQL two drafts of one study written
at once count the study's ImagingStudy once."""

from __future__ import annotations

import datetime as dt
import importlib
import threading
import time

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import report_drafts as drafts
from raddraft import counters
from raddraft.db import session_factory, session_scope
from raddraft.settings import Settings
from report_drafts import drafting, fhir_view, signoff
from report_drafts.fhir_view import REPORTS_COUNT, STUDIES_COUNT
from report_drafts.tables import Report, ReportVersion, User
from tests.drafts.conftest import ALGORITHM, RUN, archive_study, auth, draft_content
from tests.drafts.helpers import make_draft

MIGRATION = importlib.import_module("migrations.versions.0013_fhir_shown_on_report")


def shown_by_versions(session: Session, report_pk: int) -> str | None:
    """The status FHIR shows, from the versions (the definition the searches used before):
    entered-in-error once withdrawn, else the latest published version's status."""
    rows = session.scalars(
        select(ReportVersion)
        .where(ReportVersion.report_pk == report_pk)
        .order_by(ReportVersion.number)
    ).all()
    if any(r.action in drafts.WITHDRAWN_BY for r in rows):
        return drafts.WITHDRAWN_STATUS
    published = [r.status for r in rows if r.action in drafts.PUBLISHED_ACTIONS]
    return published[-1] if published else None


def test_the_shown_status_rule() -> None:
    """Published versions show their status, others change nothing, a withdrawal is for good."""
    rule = fhir_view.shown_status
    assert rule(None, "draft", "preliminary") == "preliminary"
    assert rule("preliminary", "edit", "preliminary") == "preliminary"
    assert rule(None, "finding_accept", "preliminary") is None
    assert rule("preliminary", "sign", "final") == "final"
    assert rule("final", "amend", "amended") == "amended"
    assert rule("preliminary", "reject", "preliminary") == drafts.WITHDRAWN_STATUS
    assert rule(drafts.WITHDRAWN_STATUS, "supersede", "preliminary") == drafts.WITHDRAWN_STATUS
    assert rule(drafts.WITHDRAWN_STATUS, "draft", "preliminary") == drafts.WITHDRAWN_STATUS


def kept(engine: Engine) -> dict[counters.Key, float]:
    with session_factory(engine)() as session:
        found = counters.read(session, (REPORTS_COUNT, STUDIES_COUNT))
    return {k: v for k, v in found.items() if v}


def recount(engine: Engine) -> dict[counters.Key, float]:
    """The FHIR counts from the rows, as migration 0013 builds them."""
    with engine.connect() as conn:
        transaction = conn.begin()
        MIGRATION.rebuild_fhir_counters(conn)
        rows = conn.execute(
            text("SELECT name, labels, value FROM counters WHERE name LIKE 'fhir_%'")
        ).all()
        transaction.rollback()
    return {(n, labels): float(v) for n, labels, v in rows if v}


def bundle(client: TestClient, token: str, query: str) -> Bundle:
    response = client.get(f"/fhir/{query}", headers=auth(token))
    assert response.status_code == 200, response.text
    return Bundle.model_validate_json(response.content)


def every_page(client: TestClient, token: str, query: str) -> tuple[list[str], set[int]]:
    """Every id a search pages through (following ``next``), and the totals its pages gave."""
    ids: list[str] = []
    totals: set[int] = set()
    page = bundle(client, token, query)
    for _ in range(20):
        assert page.total is not None
        totals.add(page.total)
        ids += [str(e.resource.id) for e in page.entry or []]
        following = next((str(k.url) for k in page.link or [] if k.relation == "next"), None)
        if following is None:
            return ids, totals
        page = bundle(client, token, following.split("/fhir/", 1)[1])
    raise AssertionError("more pages than reports")


def test_what_fhir_shows_follows_every_version_and_the_counts_stay_exact(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    token = tokens["rad"]
    draft, _ = make_draft(engine, settings, patient_id="PF1", accession="AF1")
    signed, _ = make_draft(engine, settings, patient_id="PF2", accession="AF2")
    corrected, _ = make_draft(engine, settings, patient_id="PF3", accession="AF3")
    rejected, _ = make_draft(engine, settings, patient_id="PF4", accession="AF4")
    older, study = make_draft(engine, settings, patient_id="PF5", accession="AF5")
    never = archive_study(engine, settings, patient_id="PF6", accession="AF6")
    with session_scope(engine) as session:
        drafting.mark_state(session, never.study_version_pk, drafts.ReportState.drafting)

    def head(report_pk: int) -> tuple[str | None, dt.datetime | None]:
        with session_factory(engine)() as session:
            report = session.get_one(Report, report_pk)
            assert report.fhir_status == shown_by_versions(session, report_pk)
            return report.fhir_status, report.fhir_updated_at

    assert head(signed)[0] == "preliminary"
    drafted_at = head(signed)[1]
    assert drafted_at is not None
    with session_scope(engine) as session:
        doctor = session.scalars(select(User).where(User.name == "rad")).one()
        signoff.open_report(session, signed, doctor)
        signoff.edit_text(session, signed, doctor, expected_version=1, impression="Edited.")
    assert head(signed) == ("preliminary", drafted_at)  # an edit is not published
    with session_scope(engine) as session:
        doctor = session.scalars(select(User).where(User.name == "rad")).one()
        signoff.sign(
            session, signed, doctor, expected_version=2, edit_reason="content", settings=settings
        )
        for report_pk in (corrected, rejected):
            signoff.open_report(session, report_pk, doctor)
        signoff.sign(
            session, corrected, doctor, expected_version=1, edit_reason="none", settings=settings
        )
        signoff.reject(session, rejected, doctor, expected_version=1, reason="wrong side")
    status, signed_at = head(signed)
    assert status == "final" and signed_at != drafted_at
    assert head(rejected)[0] == drafts.WITHDRAWN_STATUS
    with session_scope(engine) as session:
        doctor = session.scalars(select(User).where(User.name == "rad")).one()
        signoff.amend(
            session,
            signed,
            doctor,
            expected_version=3,
            reason="typo",
            impression="Amended.",
            settings=settings,
        )
        signoff.amend(
            session,
            corrected,
            doctor,
            expected_version=2,
            reason="wrong side",
            impression="Corrected.",
            corrected=True,
            settings=settings,
        )
    assert head(signed)[0] == "amended" and head(corrected)[0] == "corrected"
    # A later study version's draft supersedes the earlier draft: one study, two reports shown.
    newer, _ = make_draft(
        engine, settings, study_uid=study.study_instance_uid, version_number=2, patient_id="PF5"
    )
    assert head(older)[0] == drafts.WITHDRAWN_STATUS and head(newer)[0] == "preliminary"
    assert head(draft)[0] == "preliminary"
    with session_factory(engine)() as session:
        never_report = session.scalars(
            select(Report).where(Report.study_version_pk == never.study_version_pk)
        ).one()
        assert never_report.fhir_status is None and never_report.fhir_updated_at is None

    assert (
        kept(engine)
        == recount(engine)
        == {
            (REPORTS_COUNT, "preliminary"): 2,
            (REPORTS_COUNT, "amended"): 1,
            (REPORTS_COUNT, "corrected"): 1,
            (REPORTS_COUNT, drafts.WITHDRAWN_STATUS): 2,
            (STUDIES_COUNT, ""): 5,
        }
    )
    # The searches answer from the kept totals and the indexed status alike.
    for status, expected in (("preliminary", 2), ("entered-in-error", 2), ("final", 0)):
        found = bundle(client, token, f"DiagnosticReport?status={status}")
        assert found.total == len(found.entry or []) == expected, status
        assert {e.resource.status for e in found.entry or []} <= {status}
    assert bundle(client, token, "DiagnosticReport?status=amended,corrected").total == 2
    assert bundle(client, token, "DiagnosticReport?status=amended&status=final").total == 0
    assert bundle(client, token, "DiagnosticReport").total == 6
    assert bundle(client, token, "ImagingStudy").total == 5
    assert signed_at is not None
    since = signed_at.isoformat().replace("+00:00", "Z")
    recent = bundle(client, token, f"DiagnosticReport?_lastUpdated=ge{since}")
    assert {e.resource.subject.identifier.value for e in recent.entry} >= {"PF2", "PF3", "PF5"}
    assert "PF1" not in {e.resource.subject.identifier.value for e in recent.entry}


def test_every_page_carries_the_same_true_total(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    """A kept total (by status alone, ImagingStudy alone) and a counted one (any other
    parameter) agree, and the pages hold every match once."""
    token = tokens["rad"]
    for n in range(7):
        make_draft(engine, settings, patient_id=f"PT{n % 3}", accession=f"AT{n}")
    for query, expected in (
        ("DiagnosticReport?status=preliminary&_count=3", 7),  # kept
        ("DiagnosticReport?status=preliminary&_lastUpdated=ge2000-01-01&_count=3", 7),  # counted
        ("DiagnosticReport?patient=PT0&_count=2", 3),
        ("ImagingStudy?_count=2", 7),  # kept
        ("ImagingStudy?patient=PT1,PT2&_count=2", 4),
    ):
        ids, totals = every_page(client, token, query)
        assert totals == {expected}, query
        assert len(ids) == len(set(ids)) == expected, query


# PostgreSQL only: SQLite lets one writer at a time, so the race cannot happen there.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_drafts_of_one_study_at_once_count_its_imaging_study_once(
    engine: Engine, settings: Settings, database_url: str
) -> None:
    first = archive_study(engine, settings, patient_id="PC1")
    second = archive_study(
        engine, settings, study_uid=first.study_instance_uid, version_number=2, patient_id="PC1"
    )
    errors: list[BaseException] = []

    def draft(study_version_pk: int, session: Session) -> None:
        drafting.record_draft(
            session,
            study_version_pk=study_version_pk,
            content=draft_content(first.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=settings,
        )

    def later() -> None:
        try:
            with session_scope(engine) as session:
                draft(second.study_version_pk, session)
        except BaseException as error:  # reported by the test below
            errors.append(error)

    with session_factory(engine)() as session:
        draft(first.study_version_pk, session)  # holds the study's lock, not committed
        thread = threading.Thread(target=later)
        thread.start()
        time.sleep(1.0)  # the second draft waits for the first's decision
        session.commit()
    thread.join(30)
    assert not thread.is_alive() and errors == []
    assert kept(engine)[(STUDIES_COUNT, "")] == 1
    assert kept(engine) == recount(engine)

"""A draft whose model text carries control bytes, on SQLite and PostgreSQL: the stored draft is
clean and flagged, the raw answers stay in the stored trace, and ``raddraft trace`` finds the
draft from every id a user has and prints the raw answers without a control byte."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.engine import Engine

from raddraft.cli import main
from raddraft.db import session_scope
from raddraft.settings import DicomNode, Settings
from report_drafts import drafting, text_safety
from report_drafts.tables import DraftRun, Report, ReportVersion, SentObject
from tests.drafts.conftest import ALGORITHM, RUN, archive_study, draft_content

RAW_ANSWER = "Effusion\x02 left\x05 base\x1d."


def _settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "destinations": [DicomNode("PACS", "127.0.0.1", 11113)],
            "ris_mllp": "127.0.0.1:2575",
            "fhir_server_url": "http://127.0.0.1:1/fhir",
        }
    )


def _hostile_draft(engine: Engine, settings: Settings) -> tuple[int, Any]:
    study = archive_study(engine, settings, accession="ACC-HOSTILE")
    content = draft_content(study.sop_instance_uids[0])
    content = dataclasses.replace(
        content, findings_text=f"\x02{content.findings_text}\x1d", impression="Effusion\x05."
    )
    stages = [dict(stage) for stage in RUN["stages"]]
    stages[1]["answer"] = RAW_ANSWER
    stages[4] = {"stage": 5, "name": "comparison", "skipped": "no prior study"}
    with session_scope(engine) as session:
        row = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=content,
            run={**RUN, "stages": stages},
            algorithm=ALGORITHM,
            settings=settings,
        )
        return row.report_pk, study


def test_stored_draft_is_clean_flagged_and_the_trace_keeps_the_raw(
    engine: Engine, settings: Settings
) -> None:
    report_pk, _study = _hostile_draft(engine, _settings(settings))
    with session_scope(engine) as session:
        version = session.scalar(select(ReportVersion).where(ReportVersion.report_pk == report_pk))
        assert version is not None
        stored = version.content
        assert (
            text_safety.clean_text(stored["findings_text"]) == stored["findings_text"]
            and stored["findings_text"]
        )
        assert stored["impression"] == "Effusion."
        assert stored["extra"]["sanitised"] == {
            "findings_text": {"U+0002": 1, "U+001D": 1},
            "impression": {"U+0005": 1},
        }
        run = session.get(DraftRun, version.draft_run_pk)
        assert run is not None and run.stages[1]["answer"] == RAW_ANSWER


def _ids(engine: Engine, report_pk: int, study: Any) -> dict[str, str]:
    with session_scope(engine) as session:
        report = session.get(Report, report_pk)
        assert report is not None
        sent = list(session.scalars(select(SentObject)))
        by_kind = {s.kind: s.identifier for s in sent}
        fhir = next(s.identifier for s in sent if s.identifier.startswith("DiagnosticReport/"))
        imaging = next(s.identifier for s in sent if s.identifier.startswith("ImagingStudy/"))
        return {
            "study": study.study_instance_uid,
            "accession": "ACC-HOSTILE",
            "image": study.sop_instance_uids[0],
            "sr": by_kind["sr"],
            "gsps": by_kind["gsps"],
            "hl7": by_kind["hl7"],
            "fhir": fhir,
            "fhir-bare": fhir.split("/", 1)[1],
            "fhir-imaging": imaging,
            "report": report.uid,
        }


@pytest.mark.parametrize(
    "kind",
    ["study", "accession", "image", "sr", "gsps", "hl7", "fhir", "fhir-bare", "fhir-imaging"],
)
def test_trace_takes_any_id_and_shows_no_control_byte(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    report_pk, study = _hostile_draft(engine, _settings(settings))
    identifier = _ids(engine, report_pk, study)[kind]
    result = CliRunner().invoke(main, ["trace", identifier])
    assert result.exit_code == 0, result.output
    assert f"-> report {report_pk} version 1" in result.output
    assert "Effusion\u2402 left\u2405 base\u241d." in result.output
    assert not any(ord(c) < 0x20 and c != "\n" for c in result.output), repr(result.output)


def test_trace_of_an_unknown_id_says_what_it_takes(engine: Engine, settings: Settings) -> None:
    _hostile_draft(engine, _settings(settings))
    result = CliRunner().invoke(main, ["trace", "1.2.3.999"])
    assert result.exit_code != 0
    assert "Study Instance UID, accession number" in result.output


def test_a_radiologist_edit_is_stored_as_it_will_be_sent(
    engine: Engine, settings: Settings
) -> None:
    from report_drafts import signoff
    from report_drafts.tables import Role
    from report_drafts.users import add_user

    report_pk, _study = _hostile_draft(engine, settings)
    with session_scope(engine) as session:
        user, _token = add_user(session, "house", Role.radiologist, display_name="House^Greg")
        row = signoff.edit_text(
            session,
            report_pk,
            user,
            expected_version=1,
            impression="Pasted\x02 from\x1b[0m a terminal.",
        )
        assert row.content["impression"] == "Pasted from[0m a terminal."

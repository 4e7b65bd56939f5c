"""``raddraft studies``: its light table descriptions match the owners' tables, and its pages and
filters are right on both databases."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine
from sqlalchemy.orm import Session

import dicom_listener
import report_drafts
from dicom_listener.tables import Instance, Patient, Series, Study, StudyVersion
from raddraft.cli import main
from raddraft.commands.studies import DESCRIBED
from raddraft.db import Base
from raddraft.settings import Settings
from report_drafts.tables import Report

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)


def test_descriptions_match_the_owners_tables() -> None:
    owners = {"dicom_listener": dicom_listener.__name__, "report_drafts": report_drafts.__name__}
    for owner, described in DESCRIBED:
        real = Base.metadata.tables[described.name]
        for col in described.columns:
            assert col.name in real.columns, f"{described.name}.{col.name} is gone"
            actual = real.columns[col.name].type
            assert type(col.type) is type(actual) or (col.type.python_type is actual.python_type), (
                f"{described.name}.{col.name}: {col.type!r} vs {actual!r}"
            )
        # The description names the package that really defines the table.
        module = next(m.class_.__module__ for m in Base.registry.mappers if m.local_table is real)
        assert module.startswith(owners[owner]), (described.name, module)


def test_the_command_imports_no_heavy_package() -> None:
    """What keeps it quick: neither pydicom nor highdicom nor a RadDraft package is loaded."""
    code = (
        "import sys; from raddraft.commands import studies; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'pydicom', 'highdicom', 'dicom_listener', 'report_drafts', 'torch', 'web', 'worker'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def _seed(engine: Engine) -> list[str]:
    """Five studies of two patients, received an hour apart; the newest first in the list."""
    uids = []
    with Session(engine) as session:
        patients = [Patient(patient_id="P1"), Patient(patient_id="P2")]
        session.add_all(patients)
        session.flush()
        for n in range(5):
            at = T0 + dt.timedelta(hours=n)
            study = Study(
                study_instance_uid=f"1.2.826.0.1.{n}",
                patient_pk=patients[n % 2].id,
                accession_number=f"ACC{n}",
                last_received_at=at,
            )
            session.add(study)
            session.flush()
            for number in (1, 2) if n == 3 else (1,):
                version = StudyVersion(study_pk=study.id, number=number, state="complete")
                session.add(version)
                session.flush()
            series = Series(series_instance_uid=f"1.2.826.0.2.{n}", study_pk=study.id)
            session.add(series)
            session.flush()
            for i in range(n + 1):
                session.add(
                    Instance(
                        sop_instance_uid=f"1.2.826.0.3.{n}.{i}",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                        series_pk=series.id,
                        version_pk=version.id,
                        transfer_syntax_uid="1.2.840.10008.1.2.1",
                        path=f"x/{n}/{i}.dcm",
                        size_bytes=1,
                    )
                )
            session.add(
                Report(
                    uid=f"2.25.{n}",
                    study_version_pk=version.id,
                    study_pk=study.id,
                    state="signed" if n % 2 else "draft",
                )
            )
            uids.append(study.study_instance_uid)
        session.commit()
    return uids[::-1]


def _page(*args: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(main, ["studies", "--json", *args])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_pages_and_filters(settings: Settings, engine: Engine) -> None:
    newest_first = _seed(engine)
    first = _page("--limit", "2")
    assert [r["study_instance_uid"] for r in first] == newest_first[:2]
    rest = _page("--limit", "10", "--before", str(first[-1]["cursor"]))
    assert [r["study_instance_uid"] for r in rest] == newest_first[2:]

    by_uid = {r["study_instance_uid"]: r for r in first + rest}
    twice = by_uid["1.2.826.0.1.3"]
    assert twice["versions"] == 2 and twice["instances"] == 4
    assert twice["report_state"] == "signed"  # the report of the latest version
    assert [r["accession_number"] for r in _page("--accession", "ACC2")] == ["ACC2"]
    assert {r["patient_id"] for r in _page("--patient", "P2")} == {"P2"}
    assert len(_page("--patient", "P2")) == 2
    assert {r["report_state"] for r in _page("--report-state", "draft")} == {"draft"}
    since = (T0 + dt.timedelta(hours=3)).isoformat()
    assert [r["study_instance_uid"] for r in _page("--since", since)] == newest_first[:2]

    text = CliRunner().invoke(main, ["studies", "--limit", "2"])
    assert "ACC4" in text.output and "next page: raddraft studies --before" in text.stderr


@pytest.mark.parametrize("cursor", ["yesterday", "2026-11-01T08:00:00,1"])
def test_a_bad_cursor_is_a_clear_error(settings: Settings, cursor: str) -> None:
    result = CliRunner().invoke(main, ["studies", "--before", cursor])
    assert result.exit_code == 2 and "cursor" in result.output

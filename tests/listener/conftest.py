"""Fixtures for the listener tests: a running listener process and test images.

``listener`` starts ``python -m raddraft listen`` against the test's ``settings`` (its own data
directory and a migrated SQLite or PostgreSQL database) on a free port. Other test folders can
import :class:`tests.listener_process.ListenerProcess` directly, or this fixture with
``from tests.listener.conftest import listener``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dicom_listener.tables import Instance, Study, StudyVersion
from raddraft.jobs import Job
from raddraft.settings import Settings
from tests.dicom_factory import StudyIds, make_cxr
from tests.listener_process import ListenerProcess

T = TypeVar("T")

BIG_ROWS, BIG_COLS = 2500, 2048  # 16-bit: ~10 MB of pixel data, as the issue asks


@pytest.fixture
def listener(settings: Settings, tmp_path: Path) -> Iterator[ListenerProcess]:
    """A listener process for this test's settings; stopped (SIGTERM) afterwards."""
    process = ListenerProcess(tmp_path / "listener.log").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def big_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyIds, list[Path]]:
    """40 DX images of ~10 MB in one study (PA and LATERAL alternating), made once per session."""
    folder = tmp_path_factory.mktemp("big_study")
    ids = StudyIds(patient_id="CRASH01", accession="ACCBIG")
    paths = []
    for number in range(1, 41):
        path = folder / f"{number:03d}.dcm"
        make_cxr(
            path,
            patient_id=ids.patient_id,
            study_uid=ids.study_uid,
            series_uid=ids.series_uid,
            accession=ids.accession,
            view="PA" if number % 2 else "LATERAL",
            rows=BIG_ROWS,
            cols=BIG_COLS,
            instance_number=number,
            seed=number,
        )
        paths.append(path)
    return ids, paths


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def versions_of(engine: Engine, study_uid: str) -> list[StudyVersion]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(StudyVersion)
                .join(Study, StudyVersion.study_pk == Study.id)
                .where(Study.study_instance_uid == study_uid)
                .order_by(StudyVersion.number)
            )
        )


def study_row(engine: Engine, study_uid: str) -> Study | None:
    with Session(engine) as session:
        return session.scalar(select(Study).where(Study.study_instance_uid == study_uid))


def instance_uids(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(Instance.sop_instance_uid)))


def instance_count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count(Instance.id))) or 0)


def draft_jobs(engine: Engine) -> list[Job]:
    with Session(engine) as session:
        return list(session.scalars(select(Job).where(Job.task == "raddraft.draft_study")))


def complete_versions(engine: Engine, study_uid: str) -> list[StudyVersion]:
    return [v for v in versions_of(engine, study_uid) if v.state == "complete"]

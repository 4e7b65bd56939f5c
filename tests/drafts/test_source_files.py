"""The outbox reads no other folder's files by path: a worker without the archive's disk hands
the images it read (SOP Instance UID -> local file) to ``record_draft``; the SR references
them. The worker's image cache layout (``cache/images/<SOP>.dcm``) is the worker's alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts import drafting, outbox
from tests.drafts.conftest import ALGORITHM, RUN, archive_study, draft_content


def _move_out_of_the_archive(settings: Settings, study_uid: str, to: Path) -> dict[str, Path]:
    """The study's archived files moved to ``to`` (as a worker's own copies), by SOP UID."""
    moved: dict[str, Path] = {}
    to.mkdir(parents=True, exist_ok=True)
    for path in sorted((settings.archive_dir / study_uid).rglob("*.dcm")):
        target = to / path.name
        shutil.move(path, target)
        moved[path.stem] = target
    return moved


def test_the_sr_references_the_images_the_worker_hands_over(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    study = archive_study(engine, settings, images=2)
    files = _move_out_of_the_archive(settings, study.study_instance_uid, tmp_path / "elsewhere")
    assert set(files) == set(study.sop_instance_uids)
    with session_scope(engine) as session:
        row = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=draft_content(study.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=settings,
            source_files=files,
        )
        assert row.sr_sop_instance_uid is not None
        sr = outbox.read_outbox_dataset(session, settings, row.sr_sop_instance_uid)
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == set(study.sop_instance_uids)


def test_the_workers_cache_layout_is_not_read_behind_its_back(
    engine: Engine, settings: Settings
) -> None:
    study = archive_study(engine, settings)
    _move_out_of_the_archive(settings, study.study_instance_uid, settings.image_cache_dir)
    with session_scope(engine) as session, pytest.raises(FileNotFoundError):
        drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=draft_content(study.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=settings,
        )

"""A disk that really fills: the write fails, the sender hears 0xA700, nothing half-stored.

The data directory sits on a small tmpfs mounted by the test (the machines that run these tests
run them as root), so the archive write itself hits ENOSPC; the watermark is set out of the way
to prove the write path, not the watermark, refuses.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from raddraft.settings import Settings
from tests.dicom_factory import StudyIds, make_cxr
from tests.listener.conftest import instance_count
from tests.listener_process import ListenerProcess, acknowledged, storescu


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_refuses_then_recovers(
    settings: Settings, engine: Engine, small_disk: Path, tmp_path: Path
) -> None:
    ids = StudyIds()
    small = make_cxr(
        tmp_path / "small.dcm",
        rows=512,
        cols=512,
        study_uid=ids.study_uid,
        patient_id=ids.patient_id,
    )  # about 0.5 MB: fits
    make_cxr(
        tmp_path / "large.dcm",
        rows=1600,
        cols=1600,
        study_uid=ids.study_uid,
        patient_id=ids.patient_id,
        view="LATERAL",
    )  # about 5 MB: does not
    env = {
        "RADDRAFT_DATA_DIR": str(small_disk / "data"),
        "RADDRAFT_DISK_WATERMARK_PERCENT": "100",
        "RADDRAFT_DISK_MIN_FREE_MB": "0",
    }
    with ListenerProcess(tmp_path / "listener.log", env=env).start() as listener:
        small_path, large_path = tmp_path / "small.dcm", tmp_path / "large.dcm"
        result = storescu(listener.port, [small_path, large_path])
        output = result.stdout + result.stderr
        assert acknowledged(output) == [str(small_path)], output
        assert "OutOfResources" in output or "A700" in output.upper(), output
        assert instance_count(engine) == 1
        # No partial file of the refused instance anywhere: not in the archive, not in .tmp.
        stored = [p for p in (small_disk / "data" / "archive").rglob("*") if p.is_file()]
        assert [p.name for p in stored] == [f"{small.SOPInstanceUID}.dcm"]
        assert "No space left" in listener.log_text() or "ENOSPC" in listener.log_text()

        # Space comes back: the sender's retry is stored, once.
        subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
        retry = storescu(listener.port, [large_path])
        assert acknowledged(retry.stdout + retry.stderr) == [str(large_path)]
        assert instance_count(engine) == 2

"""A GPU worker on "another machine": its own data directory, images over WADO-RS.

The listener, router and web app share one data directory (the archive); the GPU worker gets
a different, empty one and only the database, the broker and ``RADDRAFT_ARCHIVE_URL``. A pushed
study must still be drafted, with the images read from the archive service into the worker's
bounded cache. The cache's eviction is checked on its own below.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pydicom
import pytest

from raddraft.db import engine_for, session_scope
from report_drafts.tables import Role
from report_drafts.users import add_user
from tests.conftest import free_port
from tests.dicom_factory import make_study
from tests.listener_process import port_open
from tests.processes import RadDraftProcess, raddraft_env
from tests.stack import STACK_ENV, Stack
from worker.image_cache import evict

pytestmark = pytest.mark.slow


def test_worker_with_its_own_disk_drafts_a_pushed_study(
    production_env: dict[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    web_port = free_port()
    with session_scope(engine_for(production_env["RADDRAFT_DATABASE_URL"])) as session:
        _user, token = add_user(session, "gpu-worker", Role.reader)
    env = {**production_env, "RADDRAFT_WEB_PORT": str(web_port)}
    stack = Stack(
        tmp_path / "logs",
        env,
        parts={"listener": ["listen"], "router": ["router"], "web": ["web"]},
    ).start()
    worker_dir = tmp_path / "worker-data"
    worker_env = raddraft_env(
        **{
            **STACK_ENV,
            **production_env,
            "RADDRAFT_DATA_DIR": str(worker_dir),
            "RADDRAFT_MODEL": str(tiny_checkpoint),
            "RADDRAFT_ARCHIVE_URL": f"http://127.0.0.1:{web_port}/dicomweb",
            "RADDRAFT_ARCHIVE_TOKEN": token,
        }
    )
    worker = RadDraftProcess(
        ["worker", "--queues", "gpu"], worker_env, tmp_path / "logs" / "remote-worker.log"
    ).start()
    try:
        deadline = time.monotonic() + 30
        while not port_open(web_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=300, cols=260)
        stack.push(files)
        acked = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        report = stack.wait_for_draft(ids.study_uid)
    finally:
        worker.stop()
        stack.stop()
    assert report.current_version == 1
    archive = Path(stack.env["RADDRAFT_DATA_DIR"]) / "archive"
    assert {p.stem for p in archive.rglob("*.dcm")} >= set(acked)
    assert not (worker_dir / "archive").exists() or not list(
        (worker_dir / "archive").rglob("*.dcm")
    )
    cached = {p.stem for p in (worker_dir / "cache" / "images").glob("*.dcm")}
    assert cached == set(acked)  # read over WADO-RS, every image of the study
    for sop in acked:
        remote = worker_dir / "cache" / "images" / f"{sop}.dcm"
        local = next(archive.rglob(f"{sop}.dcm"))
        assert remote.read_bytes() == local.read_bytes()  # exactly as archived


def test_cache_evicts_least_recently_used_and_keeps_the_study_in_use(tmp_path: Path) -> None:
    files = []
    for number in range(5):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1000 + number, 1000 + number))
        files.append(path)
    os.utime(files[0], (2000, 2000))  # used again lately: kept longest
    removed = evict(tmp_path, 2500, keep={files[1]})
    assert removed == 3
    assert sorted(p.name for p in tmp_path.glob("*.dcm")) == ["0.dcm", "1.dcm"]

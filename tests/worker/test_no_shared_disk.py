"""Workers on "other machines": each its own data directory, nothing shared but the database.

The listener, router and web app share one data directory (the archive); the GPU worker gets
a different, empty one and only the database, the broker and ``RADDRAFT_ARCHIVE_URL``; the io
worker a third one. A pushed study must still be drafted, with the images read from the archive
service into the worker's bounded cache, and its SR must still reach the PACS (Orthanc), sent by
the io worker from the outbox it materialises from the database. The cache's eviction is
checked on its own below.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from raddraft.db import engine_for, session_scope
from report_drafts.tables import ReportVersion, Role
from report_drafts.users import add_user
from tests.conftest import free_port
from tests.dicom_factory import make_study
from tests.listener_process import port_open
from tests.orthanc import OrthancServer
from tests.processes import RadDraftProcess, raddraft_env
from tests.stack import STACK_ENV, Stack
from worker.image_cache import evict

pytestmark = pytest.mark.slow


def test_workers_with_their_own_disks_draft_a_pushed_study_and_deliver_it(
    production_env: dict[str, str], orthanc: OrthancServer, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    web_port = free_port()
    with session_scope(engine_for(production_env["RADDRAFT_DATABASE_URL"])) as session:
        _user, token = add_user(session, "gpu-worker", Role.reader)
    env = {
        **production_env,
        "RADDRAFT_WEB_PORT": str(web_port),
        "RADDRAFT_DESTINATIONS": str(orthanc.dicom_node),
        "RADDRAFT_ALLOW_DEMO_EXPORT": "true",  # the tiny checkpoint is a demo model
    }
    stack = Stack(
        tmp_path / "logs",
        env,
        parts={"listener": ["listen"], "router": ["router"], "web": ["web"]},
    ).start()
    worker_dir = tmp_path / "worker-data"
    worker_env = raddraft_env(
        **{
            **STACK_ENV,
            **env,
            "RADDRAFT_DATA_DIR": str(worker_dir),
            "RADDRAFT_MODEL": str(tiny_checkpoint),
            "RADDRAFT_ARCHIVE_URL": f"http://127.0.0.1:{web_port}/dicomweb",
            "RADDRAFT_ARCHIVE_TOKEN": token,
        }
    )
    worker = RadDraftProcess(
        ["worker", "--queues", "gpu"], worker_env, tmp_path / "logs" / "remote-worker.log"
    ).start()
    io_dir = tmp_path / "io-worker-data"
    io_env = raddraft_env(**{**STACK_ENV, **env, "RADDRAFT_DATA_DIR": str(io_dir)})
    io_worker = RadDraftProcess(
        ["worker", "--queues", "io"], io_env, tmp_path / "logs" / "io-worker.log"
    ).start()
    try:
        deadline = time.monotonic() + 30
        while not port_open(web_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=300, cols=260)
        stack.push(files)
        acked = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        report = stack.wait_for_draft(ids.study_uid)
        stack.wait_for_jobs("raddraft.export_dicom", {"done"}, 1)
    finally:
        io_worker.stop()
        worker.stop()
        stack.stop()
    assert report.current_version == 1
    with session_scope(stack.engine) as session:
        version = session.scalar(select(ReportVersion).where(ReportVersion.report_pk == report.id))
        assert version is not None and version.sr_sop_instance_uid
        sr_uid = version.sr_sop_instance_uid
    # Built on the GPU worker's disk, sent from the io worker's: the same bytes, in the PACS.
    built = (worker_dir / "outbox" / f"{sr_uid}.dcm").read_bytes()
    sent = (io_dir / "outbox" / f"{sr_uid}.dcm").read_bytes()
    assert sent == built
    assert orthanc.instance_tags(sr_uid)["StudyInstanceUID"] == ids.study_uid
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

"""The listener when things go wrong: a crash mid-push, a full disk, bad data, TLS."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from sqlalchemy.engine import Engine

from raddraft.settings import Settings
from tests.certs import certificates
from tests.dicom_factory import DX_FOR_PRESENTATION, StudyIds, make_cxr, new_uid
from tests.listener.conftest import (
    complete_versions,
    draft_jobs,
    instance_count,
    instance_uids,
    versions_of,
    wait_for,
)
from tests.listener_process import (
    DCMTK_BIN,
    DCMTK_ENV,
    ListenerProcess,
    acknowledged,
    echoscu,
    storescu,
)


def test_kill_9_mid_push_loses_no_acknowledged_instance(
    settings: Settings,
    engine: Engine,
    tmp_path: Path,
    big_study: tuple[StudyIds, list[Path]],
) -> None:
    ids, files = big_study
    listener = ListenerProcess(tmp_path / "listener.log").start()
    command = [str(DCMTK_BIN / "storescu"), "-v", "-aet", "STORESCU", "-aec", "RADDRAFT"]
    command += ["127.0.0.1", str(listener.port), *map(str, files)]
    push = subprocess.Popen(
        command,
        env=DCMTK_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: instance_count(engine) >= 8, timeout=60, interval=0.02)
        listener.kill9()
        output, _ = push.communicate(timeout=60)
    finally:
        push.kill()
        listener.kill9()
    acked = acknowledged(output)
    # The kill lands after 8 commits; the 8th may be recorded with its response not yet sent
    # (durable before acknowledged, never the other way round), so 7 or more were acked.
    assert 7 <= len(acked) < len(files), output[-2000:]

    # Every instance storescu saw acknowledged is on disk, whole, and in the database.
    stored = set(instance_uids(engine))
    for path in acked:
        sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert sop in stored
        archived = settings.archive_dir / ids.study_uid / ids.series_uid / f"{sop}.dcm"
        assert archived.stat().st_size >= Path(path).stat().st_size - 4096
        assert dcmread(archived).PixelData == dcmread(path).PixelData

    listener.start()  # restart: leftovers of the interrupted write are gone
    assert not list((settings.archive_dir / ".tmp").iterdir())
    # Either the kill cut a write short (its temp file is removed at start), or every stored
    # instance was acknowledged but at most the one whose response the kill cut off.
    assert "removed unfinished writes" in listener.log_text() or len(stored) - len(acked) <= 1

    again = storescu(listener.port, files)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert len(acknowledged(again.stdout + again.stderr)) == len(files)
    uids = instance_uids(engine)
    assert len(uids) == len(set(uids)) == len(files)
    assert len(list((settings.archive_dir / ids.study_uid).rglob("*.dcm"))) == len(files)
    wait_for(
        lambda: (
            versions_of(engine, ids.study_uid)
            and all(v.state == "complete" for v in versions_of(engine, ids.study_uid))
        ),
        timeout=20,
    )
    versions = complete_versions(engine, ids.study_uid)
    assert {j.key for j in draft_jobs(engine)} == {v.job_key for v in versions}
    listener.stop()


def test_disk_watermark_refuses_with_out_of_resources(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "one.dcm"
    make_cxr(path)
    with ListenerProcess(
        tmp_path / "listener.log", env={"RADDRAFT_DISK_WATERMARK_PERCENT": "0.001"}
    ).start() as listener:
        result = storescu(listener.port, [path])
        output = result.stdout + result.stderr
        assert "OutOfResources" in output or "A700" in output.upper(), output
        assert acknowledged(output) == []
        assert "watermark" in listener.log_text()
    assert instance_count(engine) == 0
    assert list(settings.archive_dir.rglob("*.dcm")) == []


def _send_raw(port: int, path: Path) -> int:
    """C-STORE the file's bytes after its file meta exactly as they are (pynetdicom's chunked
    send does not parse them), so broken data sets reach the listener unrepaired."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(DX_FOR_PRESENTATION, ExplicitVRLittleEndian)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="RADDRAFT")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return int(status.Status)


def _file_with_body(path: Path, body: bytes, sop_uid: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1077.1"
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path.write_bytes(buffer.getvalue() + body)
    return path


def test_malformed_datasets_are_refused_and_quarantined(
    listener: ListenerProcess, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    whole = tmp_path / "whole.dcm"
    good = make_cxr(whole, rows=512, cols=512)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = _file_with_body(tmp_path / "garbage.dcm", os.urandom(20_000), new_uid())

    no_study = tmp_path / "no_study.dcm"
    ds = make_cxr(None)
    del ds.StudyInstanceUID
    ds.save_as(no_study, enforce_file_format=True)
    no_patient = tmp_path / "no_patient.dcm"
    ds = make_cxr(None)
    del ds.PatientID
    ds.save_as(no_patient, enforce_file_format=True)

    statuses = {
        "truncated": _send_raw(listener.port, truncated),
        "garbage": _send_raw(listener.port, garbage),
        "no_study": _send_raw(listener.port, no_study),
        "no_patient": _send_raw(listener.port, no_patient),
    }
    assert statuses["truncated"] == 0xC000  # cannot understand
    assert statuses["garbage"] in (0xC000, 0xA900)
    assert statuses["no_study"] == 0xA900  # data set does not match the SOP class
    assert statuses["no_patient"] == 0xA900

    notes = sorted(settings.quarantine_dir.glob("*.txt"))
    assert len(notes) == 4
    assert len(list(settings.quarantine_dir.glob("*.dcm"))) == 4
    reasons = " | ".join(n.read_text() for n in notes)
    assert "truncated" in reasons and "StudyInstanceUID" in reasons and "PatientID" in reasons
    assert list(settings.archive_dir.rglob("*.dcm")) == []
    assert not list((settings.archive_dir / ".tmp").iterdir())
    assert instance_count(engine) == 0
    assert listener.log_text().count("dataset quarantined") == 4

    # The listener is unharmed: the intact file still goes in.
    assert _send_raw(listener.port, whole) == 0
    assert instance_uids(engine) == [good.SOPInstanceUID]


def test_tls_accepts_a_client_certificate_and_refuses_without(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    certs = certificates(tmp_path)
    env = {
        "RADDRAFT_TLS_CERT": str(certs["server_crt"]),
        "RADDRAFT_TLS_KEY": str(certs["server_key"]),
        "RADDRAFT_TLS_CA": str(certs["ca"]),
    }
    path = tmp_path / "one.dcm"
    make_cxr(path)
    with ListenerProcess(tmp_path / "listener.log", env=env).start() as listener:
        with_cert = ["+tls", str(certs["client_key"]), str(certs["client_crt"])]
        with_cert += ["+cf", str(certs["ca"])]
        ok = echoscu(listener.port, options=with_cert)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        stored = storescu(listener.port, [path], options=with_cert)
        assert stored.returncode == 0, stored.stdout + stored.stderr

        anonymous = echoscu(listener.port, options=["+tla", "+cf", str(certs["ca"])])
        assert anonymous.returncode != 0
        plain = echoscu(listener.port, timeout=30)
        assert plain.returncode != 0
        time.sleep(0.2)
        assert "TLS handshake failed" in listener.log_text()
        assert echoscu(listener.port, options=with_cert).returncode == 0  # still serving
    assert instance_count(engine) == 1

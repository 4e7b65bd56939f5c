"""The outbox lives in the database: a process with another data directory reads the same bytes.

A GPU worker on one machine writes a draft's payloads; the io worker and the web app, each with
its own ``RADDRAFT_DATA_DIR``, materialise them from the database (sha256 checked), so no
process needs another's disk. Run on SQLite and PostgreSQL (the ``engine`` fixture).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import Engine, update

from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts.outbox import (
    OutboxPayloadError,
    _write_dataset,
    _write_once,
    materialise,
    read_outbox_dataset,
)
from report_drafts.tables import OutboxPayload

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _elsewhere(settings: Settings, path: Path) -> Settings:
    """The same deployment seen from another machine: same database, its own data directory."""
    path.mkdir()
    return settings.model_copy(update={"data_dir": path})


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_a_payload_written_on_one_disk_is_read_on_another(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    message = b"MSH|^~\\&|RADDRAFT|\rOBX|1|TX|||preliminary\r"
    ds = _dataset()
    with session_scope(engine) as session:
        _write_once(session, settings, "hl7/RD1.hl7", message)
        relative = _write_dataset(session, settings, ds)
    written = (settings.data_dir / "outbox" / relative).read_bytes()

    other = _elsewhere(settings, tmp_path / "io-worker")
    assert not (other.data_dir / "outbox").exists()
    with session_scope(engine) as session:
        hl7 = materialise(session, other, "hl7/RD1.hl7")
        sr = read_outbox_dataset(session, other, str(ds.SOPInstanceUID))
        row = session.get(OutboxPayload, relative)
        assert row is not None
        recorded = (row.sha256, row.size)
    assert hl7 == other.data_dir / "outbox" / "hl7" / "RD1.hl7"
    assert hl7.read_bytes() == message
    copy = (other.data_dir / "outbox" / relative).read_bytes()
    assert copy == written
    assert recorded == (hashlib.sha256(written).hexdigest(), len(written))
    assert str(sr.SOPInstanceUID) == str(ds.SOPInstanceUID)
    assert pydicom.dcmread(other.data_dir / "outbox" / relative).Modality == "SR"
    assert not list((other.data_dir / "outbox").rglob("*.tmp"))  # renamed into place


def test_a_payload_is_written_once(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    with session_scope(engine) as session:
        _write_once(session, settings, "fhir/a.json", b"{}")
    other = _elsewhere(settings, tmp_path / "gpu-2")  # another worker, no local file to trip on
    with pytest.raises(FileExistsError, match="never rewritten"), session_scope(engine) as session:
        _write_once(session, other, "fhir/a.json", b'{"changed": 1}')
    with session_scope(engine) as session:
        fresh = _elsewhere(settings, tmp_path / "fresh")
        assert materialise(session, fresh, "fhir/a.json").read_bytes() == b"{}"


def test_a_rolled_back_payload_is_not_in_the_outbox(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        _write_once(session, settings, "hl7/RD2.hl7", b"MSH|")
        raise RuntimeError("the version's transaction fails after the payload was written")
    other = _elsewhere(settings, tmp_path / "web")
    with pytest.raises(OutboxPayloadError, match="no payload"), session_scope(engine) as session:
        materialise(session, other, "hl7/RD2.hl7")
    assert not (other.data_dir / "outbox" / "hl7" / "RD2.hl7").exists()


def test_a_corrupted_payload_is_refused_and_not_materialised(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    with session_scope(engine) as session:
        _write_once(session, settings, "hl7/RD3.hl7", b"MSH|final")
    with session_scope(engine) as session:
        session.execute(
            update(OutboxPayload)
            .where(OutboxPayload.path == "hl7/RD3.hl7")
            .values(data=b"MSH|fin4l")
        )
    other = _elsewhere(settings, tmp_path / "io-worker")
    with pytest.raises(OutboxPayloadError, match="do not match"), session_scope(engine) as session:
        materialise(session, other, "hl7/RD3.hl7")
    assert not (other.data_dir / "outbox" / "hl7").exists() or not list(
        (other.data_dir / "outbox" / "hl7").iterdir()
    )

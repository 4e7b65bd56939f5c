"""Hostile input over the network: each bound answered with its PS3.4 B.2.3 status and a log
line, the listener still serving afterwards (C-ECHO), nothing written outside the archive."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from pydicom import dcmread
from sqlalchemy.engine import Engine

from dicom_listener import ingest_batch
from raddraft.settings import Settings
from tests import hostile
from tests.listener.conftest import instance_count
from tests.listener_process import ListenerProcess

LIMIT_ENV = {"RADDRAFT_MAX_DATASET_MB": "1", "RADDRAFT_NETWORK_TIMEOUT_SECONDS": "2"}


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_bombs_and_lies_are_refused_with_their_status(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    with ListenerProcess(tmp_path / "listener.log", env=LIMIT_ENV).start() as listener:
        port = listener.port
        assert hostile.send_part10(port, hostile.deep_sequences(5000), tmp_path) == 0xC000
        assert hostile.send_part10(port, hostile.pixel_bomb(), tmp_path) == 0xA700
        assert hostile.send_part10(port, hostile.lying_length(), tmp_path) == 0xC000
        # 2 MB of pixels against a 1 MB limit: refused while streaming, nothing kept.
        assert hostile.send_part10(port, hostile.valid(1024, 1024), tmp_path) == 0xA700
        assert hostile.echo(port)
        log = listener.log_text()
        assert "nested deeper than 32" in log
        assert "pixel data would decode to" in log
        assert "larger than the 1048576 byte limit" in log
        assert log.count("C-STORE refused, out of resources") == 2
        # A sane instance still goes in.
        assert hostile.send_part10(port, hostile.valid(64, 64), tmp_path) == 0
    assert instance_count(engine) == 1
    assert not list((settings.archive_dir / ".tmp").iterdir())
    assert len(list(settings.quarantine_dir.glob("*.dcm"))) == 2  # the two 0xC000 ones


def test_a_lying_pdu_length_aborts_without_allocating_it(
    settings: Settings, tmp_path: Path
) -> None:
    with ListenerProcess(tmp_path / "listener.log", env=LIMIT_ENV).start() as listener:
        assert listener.process is not None
        before = _rss_kb(listener.process.pid)
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
            # A-ASSOCIATE-RQ (PS3.8 9.3.2) claiming 4 GiB - 16 bytes, followed by a few.
            sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\0" * 64)
            assert sock.recv(100) == b""  # closed by the listener
        time.sleep(0.3)
        assert _rss_kb(listener.process.pid) - before < 64 * 1024
        assert "PDU refused, association aborted" in listener.log_text()
        assert hostile.echo(listener.port)


def test_a_peer_stalled_mid_pdu_is_cut_off_after_the_network_timeout(
    settings: Settings, tmp_path: Path
) -> None:
    with ListenerProcess(tmp_path / "listener.log", env=LIMIT_ENV).start() as listener:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\0" * 20)  # 180 bytes owed
            started = time.monotonic()
            assert sock.recv(100) == b""
            waited = time.monotonic() - started
        assert 1.0 < waited < 10.0
        assert hostile.echo(listener.port)


def test_a_polyglot_preamble_is_zeroed_before_archiving(settings: Settings, engine: Engine) -> None:
    base = hostile.valid(32, 32)
    for preamble in hostile.POLYGLOT_PREAMBLES:
        data = preamble.ljust(128, b"\0")[:128] + base[128:]
        (stored,) = ingest_batch([data], calling_ae_title="STOWSCU", settings=settings)
        assert stored.status == 0 and stored.path is not None
        assert stored.path.read_bytes()[:128] == b"\0" * 128
        assert stored.path.read_bytes()[128:] == base[128:]
        assert dcmread(stored.path).SOPInstanceUID == stored.sop_instance_uid
        base = hostile.valid(32, 32, seed=len(preamble))  # a new instance each time


def test_connections_closed_before_associating_free_their_slot_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    """bench/fuzz.py found it: each such connection held an association slot for the whole
    ACSE timeout, so 16 probes locked every modality out for 30 s."""
    env = {**LIMIT_ENV, "RADDRAFT_MAX_ASSOCIATIONS": "2", "RADDRAFT_ACSE_TIMEOUT_SECONDS": "30"}
    with ListenerProcess(tmp_path / "listener.log", env=env).start() as listener:
        probes = [b"", b"\x01\x00", b"\x73\x00\x00\x00\x00\x10" + b"x" * 16] * 4
        started = time.monotonic()
        for probe in probes:
            with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
                sock.sendall(probe)
                sock.shutdown(socket.SHUT_WR)
                sock.recv(64)
            time.sleep(0.15)
            assert hostile.echo(listener.port), listener.log_tail()
        assert time.monotonic() - started < 15
        assert "association limit reached" not in listener.log_text()


def test_an_aborted_c_store_leaves_no_partial_file(settings: Settings, tmp_path: Path) -> None:
    """bench/fuzz.py found it: a connection dropped mid-data-set left its spool in
    archive/.tmp until the next start, so repeated aborts could fill the disk."""
    store_rq = hostile.command_set(
        [
            (0x0002, hostile.DX_FOR_PRESENTATION.encode()),
            (0x0100, struct.pack("<H", 0x0001)),
            (0x0110, struct.pack("<H", 7)),
            (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)),
            (0x1000, b"1.2.826.0.1.3680043.10.1077.99"),
        ]
    )
    rq = hostile.associate_rq(
        calling="MODALITY", abstract=hostile.DX_FOR_PRESENTATION, syntaxes=(hostile.EXPLICIT,)
    )
    tmp = settings.archive_dir / ".tmp"
    with ListenerProcess(tmp_path / "listener.log", env=LIMIT_ENV).start() as listener:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
                sock.sendall(rq)
                assert sock.recv(6)[:1] == b"\x02"  # A-ASSOCIATE-AC
                sock.recv(65536)
                sock.sendall(hostile.p_data(store_rq))
                sock.sendall(hostile.p_data(b"\x08\x00\x16\x00UI" + b"\0" * 200, header=0x00))
                time.sleep(0.3)
                assert list(tmp.iterdir())  # the spool exists while the transfer is open
            deadline = time.monotonic() + 5
            while list(tmp.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not list(tmp.iterdir()), listener.log_tail()
        assert listener.log_text().count("partial data set removed") == 3
        assert hostile.echo(listener.port)

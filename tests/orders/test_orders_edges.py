"""MLLP framing and the order listener's bounds (issue 20, items 9 and 10; HL7 v2.5.1
Implementation Guide, appendix C.4.2).

One frame, one message: a frame of two is kept whole and answered AR (the second order was
lost: one AA, and only the first stored); a start block before the previous frame's end block
cuts that frame off (AR) and the next is read; bytes outside a frame are dropped and logged.
Connections are capped in total and per address, so what unfinished frames hold in memory is
bounded, and given back when they close. Loopback only: 127.0.0.2 stands for another host.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

import orders
from orders.tables import OrderMessage
from raddraft.db import session_scope
from raddraft.settings import Settings
from tests.conftest import free_port, reload_settings
from tests.orders.test_orders import END, START, Client, orm
from tests.orders.test_orders_frames import message, read_ack

MAX_KB = 2048
PER_PEER = 4
CRLF = b"\r\n"


@pytest.fixture
def listener(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[orders.OrderServer]:
    monkeypatch.setenv("RADDRAFT_ORDERS_HOST", "127.0.0.1")
    monkeypatch.setenv("RADDRAFT_ORDERS_PORT", str(free_port()))
    monkeypatch.setenv("RADDRAFT_ORDERS_ALLOWED_FACILITIES", "GENHOSP")
    monkeypatch.setenv("RADDRAFT_ORDERS_MAX_MESSAGE_KB", str(MAX_KB))
    monkeypatch.setenv("RADDRAFT_ORDERS_MAX_CONNECTIONS", "8")
    monkeypatch.setenv("RADDRAFT_ORDERS_MAX_CONNECTIONS_PER_PEER", str(PER_PEER))
    server = orders.OrderServer(reload_settings(), idle_timeout=20)
    server.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection to the listener on 127.0.0.1 from ``source`` (any 127.x address is ours)."""
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _wait_open(server: orders.OrderServer, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while server.open_connections() != count:
        assert time.monotonic() < deadline, f"{server.open_connections()} open, not {count}"
        time.sleep(0.02)


def test_a_frame_of_two_messages_is_ar_and_kept_whole(
    engine: Engine, listener: orders.OrderServer
) -> None:
    client = Client(listener.port)
    two = orm("TWO1") + "\r" + orm("TWO2", accession="ACCTWO2")
    ack = client.send(two)
    assert ack["MSA"][1:3] == ["AR", "TWO1"]
    assert "holds 2 messages" in ack["MSA"][3]
    assert client.send(orm("AFTER2"))["MSA"][1] == "AA"  # the connection goes on
    client.close()
    kept = message(engine, "TWO1")
    assert kept.ack_code == "AR" and kept.raw == two  # the second order is stored, not lost
    with session_scope(engine) as session:
        assert session.scalar(select(OrderMessage).where(OrderMessage.raw.contains("TWO2")))


def test_bytes_outside_frames_are_dropped_and_logged_and_a_cut_off_frame_is_ar(
    engine: Engine, listener: orders.OrderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="orders.server")
    with _connect(listener.port) as sock:
        sock.sendall(orm("BARE1").encode() + END + b"junk" + START + orm("FRAMED1").encode() + END)
        assert read_ack(sock)["MSA"][1:3] == ["AA", "FRAMED1"]
        # A start block before the end block: the first frame was cut off.
        sock.sendall(START + orm("CUT1").encode() + START + orm("WHOLE1").encode() + END)
        first = read_ack(sock)
        assert first["MSA"][1:3] == ["AR", "CUT1"] and "start block" in first["MSA"][3]
        assert read_ack(sock)["MSA"][1:3] == ["AA", "WHOLE1"]
    dropped = [r for r in caplog.records if "outside an MLLP frame dropped" in r.getMessage()]
    assert dropped and dropped[0].levelno == logging.WARNING
    assert f"bytes={len(orm('BARE1')) + 2 + 4}" in dropped[0].getMessage()
    assert message(engine, "CUT1").ack_code == "AR"
    with session_scope(engine) as session:
        assert not session.scalar(select(OrderMessage).where(OrderMessage.control_id == "BARE1"))


def test_line_ends_between_frames_are_logged_at_debug_with_only_the_dropped_bytes(
    engine: Engine, listener: orders.OrderServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Some senders end each frame with CR LF: those bytes are dropped at debug level. The log
    showed the 32 bytes from where they began, the next frame's too, so a CR LF that came with
    the next frame was a warning that named that frame's content."""
    caplog.set_level(logging.DEBUG, logger="orders.server")
    with _connect(listener.port) as sock:
        first, second = orm("CRLF1").encode(), orm("CRLF2").encode()
        sock.sendall(START + first + END + CRLF + START + second + END)
        assert read_ack(sock)["MSA"][1:3] == ["AA", "CRLF1"]
        assert read_ack(sock)["MSA"][1:3] == ["AA", "CRLF2"]
        # The listener logs after answering what the chunk held; the next answer comes after.
        sock.sendall(START + orm("CRLF3").encode() + END)
        assert read_ack(sock)["MSA"][1:3] == ["AA", "CRLF3"]
    dropped = [r for r in caplog.records if "outside an MLLP frame dropped" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].levelno == logging.DEBUG
    assert dropped[0].getMessage().endswith(f"bytes=2 first={CRLF!r}")


def test_connections_are_capped_per_address_and_another_host_is_served(
    engine: Engine, listener: orders.OrderServer
) -> None:
    stalled = [_connect(listener.port) for _ in range(PER_PEER)]
    try:
        for sock in stalled:
            sock.sendall(START + b"MSH|^~\\&|RIS|GENHOSP")  # and then nothing
        _wait_open(listener, PER_PEER)
        with _connect(listener.port) as refused:
            assert refused.recv(10) == b""  # closed at accept
        other = Client.__new__(Client)
        other.sock = _connect(listener.port, "127.0.0.2")
        assert other.send(orm("OTHERHOST1"))["MSA"][1] == "AA"
        other.close()
    finally:
        for sock in stalled:
            sock.close()
    _wait_open(listener, 0)
    again = Client(listener.port)
    assert again.send(orm("AGAIN1"))["MSA"][1] == "AA"
    again.close()


def test_memory_of_unfinished_frames_is_bounded_and_given_back(
    engine: Engine, listener: orders.OrderServer
) -> None:
    """Twenty senders of unfinished 1.5 MB frames (under the 2 MB limit), as in the issue
    (there 15 MB under 16): the caps keep at most four in memory, and it all comes back when
    they close."""
    body = START + b"MSH|^~\\&|RIS|GENHOSP|" + b"x" * (1536 << 10)
    started = tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        senders = []
        for _ in range(20):
            sock = _connect(listener.port)
            senders.append(sock)
            with contextlib.suppress(OSError):  # refused at accept: the close cuts our send
                sock.sendall(body)
        _wait_open(listener, PER_PEER)
        time.sleep(0.5)  # the accepted ones have read all of theirs
        during, _ = tracemalloc.get_traced_memory()
        for sock in senders:
            sock.close()
        _wait_open(listener, 0)
        time.sleep(0.2)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        if not started:
            tracemalloc.stop()
    held_mb = (during - before) / (1 << 20)
    assert held_mb < PER_PEER * MAX_KB / 1024 + 4, held_mb  # 20 x 1.5 MB unbounded
    assert (after - before) / (1 << 20) < 2, (after - before) / (1 << 20)
    # The unfinished frames were kept and refused as the connections closed.
    with session_scope(engine) as session:
        refused = session.scalars(select(OrderMessage.ack_code)).all()
    assert refused and set(refused) == {"AR"}

"""Frames the order listener cannot take whole, each found by bench/fuzz.py: a frame over
RADDRAFT_ORDERS_MAX_MESSAGE_KB and a frame the sender ended without its
end block are stored (their first 64 KiB) and answered AR instead of dropped; bytes that are not
UTF-8 are stored as ISO 8859-1 and NUL as U+FFFD (no text column holds NUL), on PostgreSQL and
SQLite, instead of the AE 'not stored' a database error gave."""

from __future__ import annotations

import socket
import tracemalloc
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

import orders
from orders.hl7 import header_of, parse_order
from orders.tables import OrderMessage
from raddraft.db import session_scope
from raddraft.settings import Settings
from tests.conftest import free_port, reload_settings
from tests.orders.test_orders import END, START, Client, orm


@pytest.fixture
def port(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setenv("RADDRAFT_ORDERS_HOST", "127.0.0.1")
    monkeypatch.setenv("RADDRAFT_ORDERS_PORT", str(free_port()))
    monkeypatch.setenv("RADDRAFT_ORDERS_ALLOWED_FACILITIES", "GENHOSP")
    monkeypatch.setenv("RADDRAFT_ORDERS_MAX_MESSAGE_KB", "256")
    listener = orders.OrderServer(reload_settings(), idle_timeout=5)
    listener.start()
    try:
        yield listener.port
    finally:
        listener.shutdown()
        listener.server_close()


def read_ack(sock: socket.socket) -> dict[str, list[str]]:
    buffer = b""
    while END not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "closed before the ACK"
        buffer += chunk
    text = buffer[buffer.index(START) + 1 : buffer.index(END)].decode()
    return {s.split("|")[0]: s.split("|") for s in text.split("\r") if s}


def message(engine: Engine, control: str) -> OrderMessage:
    with session_scope(engine) as session:
        row = session.scalar(select(OrderMessage).where(OrderMessage.control_id == control))
        assert row is not None, f"message {control} not stored"
        session.expunge(row)
        return row


def test_a_frame_over_the_limit_is_ar_and_kept_and_the_next_connection_served(
    engine: Engine, port: int
) -> None:
    client = Client(port)
    ack = client.send(orm("BIG1", reason="x" * (300 << 10)))
    assert ack["MSA"][1:3] == ["AR", "BIG1"]
    assert "larger than 256 KiB" in ack["MSA"][3]
    client.close()  # the listener closes it: the rest of the frame is not read as messages
    again = Client(port)
    assert again.send(orm("AFTER1"))["MSA"][1] == "AA"
    again.close()
    kept = message(engine, "BIG1")
    assert kept.ack_code == "AR" and len(kept.raw) == 64 * 1024
    assert kept.raw.startswith("MSH|^~\\&|RIS|GENHOSP")


def test_a_frame_still_growing_over_the_limit_is_ar_kept_and_closed(
    engine: Engine, port: int
) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(START + orm("GROW1").encode() + b"NTE|1||" + b"y" * (400 << 10))
        ack = read_ack(sock)
    assert ack["MSA"][1:3] == ["AR", "GROW1"]
    assert message(engine, "GROW1").ack_code == "AR"


def test_a_frame_without_its_end_block_is_ar_and_kept(engine: Engine, port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(START + orm("NOEND1").encode())
        sock.shutdown(socket.SHUT_WR)
        ack = read_ack(sock)
    assert ack["MSA"][1:3] == ["AR", "NOEND1"]
    assert "end block" in ack["MSA"][3]
    kept = message(engine, "NOEND1")
    assert kept.ack_code == "AR" and kept.raw == orm("NOEND1")


def test_latin_1_and_nul_bytes_are_stored_not_refused(engine: Engine, port: int) -> None:
    client = Client(port)
    latin = orm("LAT1").replace("Doe^Jane", "Müller^Jürgen").encode("latin-1")
    assert client.send(latin)["MSA"][1:3] == ["AA", "LAT1"]
    nul = orm("NUL1").encode().replace(b"Shortness", b"Short\0ness")
    assert client.send(nul)["MSA"][1] in ("AA", "AE", "AR")
    client.close()
    assert "Müller^Jürgen" in message(engine, "LAT1").raw
    kept = message(engine, "NUL1")
    assert "Short\ufffdness" in kept.raw and "not stored" not in (kept.error or "")


def test_a_message_of_many_segments_is_read_in_bounded_memory(engine: Engine, port: int) -> None:
    many = orm("MANY1") + "\rNTE|1||note" * 20000
    started = tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        fields = parse_order(many, header_of(many))
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        if not started:
            tracemalloc.stop()
    assert fields.accession_number == "ACC0001"
    assert peak < 20 << 20  # bytes; hl7apy's tree of all 20,000 segments took about 150 MB
    client = Client(port)
    assert client.send(many)["MSA"][1:3] == ["AA", "MANY1"]
    client.close()
    assert message(engine, "MANY1").raw == many  # stored whole, as received

"""The order listener over TLS per PS3.15 B.9 (BCP 195) with real clients: ``openssl s_client``
refused on TLS 1.1, accepted on TLS 1.2 (an RFC 9325 suite) and 1.3; without a client
certificate refused when a CA is set (mutual TLS); RadDraft's own MLLP client (peers/mllp.py)
over TLS gets its AA, and a plain-TCP sender gets nothing stored."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

import orders
from orders.tables import OrderMessage
from peers.mllp import NoAckError, send_message
from raddraft.db import session_scope
from raddraft.settings import Settings
from raddraft.tls import BCP195_CIPHERS, client_context
from tests.certs import certificates
from tests.conftest import free_port, reload_settings
from tests.orders.test_orders import orm


def s_client(
    port: int, certs: dict[str, Path], *options: str, cert: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"]
    command += ["-CAfile", str(certs["ca"])]
    if cert:
        command += ["-cert", str(certs["client_crt"]), "-key", str(certs["client_key"])]
    return subprocess.run(
        [*command, *options], input="", capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def tls_orders(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[int, dict[str, Path]]]:
    certs = certificates(tmp_path)
    monkeypatch.setenv("RADDRAFT_ORDERS_HOST", "127.0.0.1")
    monkeypatch.setenv("RADDRAFT_ORDERS_PORT", str(free_port()))
    monkeypatch.setenv("RADDRAFT_ORDERS_ALLOWED_FACILITIES", "GENHOSP")
    monkeypatch.setenv("RADDRAFT_ORDERS_TLS_CERT", str(certs["server_crt"]))
    monkeypatch.setenv("RADDRAFT_ORDERS_TLS_KEY", str(certs["server_key"]))
    monkeypatch.setenv("RADDRAFT_ORDERS_TLS_CA", str(certs["ca"]))
    listener = orders.OrderServer(reload_settings(), idle_timeout=5)
    listener.start()
    try:
        yield listener.port, certs
    finally:
        listener.shutdown()
        listener.server_close()


def test_tls_versions_follow_bcp195_and_a_client_certificate_is_required(
    tls_orders: tuple[int, dict[str, Path]],
) -> None:
    port, certs = tls_orders
    old = s_client(port, certs, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.returncode != 0
    assert "alert protocol version" in old.stderr or "unsupported protocol" in old.stderr, (
        old.stderr
    )
    twelve = s_client(port, certs, "-tls1_2")
    assert twelve.returncode == 0, twelve.stderr
    assert "Protocol version: TLSv1.2" in twelve.stderr
    suite = next(line for line in twelve.stderr.splitlines() if line.startswith("Ciphersuite:"))
    assert suite.split(":", 1)[1].strip() in BCP195_CIPHERS.split(":")
    thirteen = s_client(port, certs)
    assert thirteen.returncode == 0, thirteen.stderr
    assert "Protocol version: TLSv1.3" in thirteen.stderr
    # TLS 1.2 makes the server ask for the certificate inside the handshake: refused at once.
    anonymous = s_client(port, certs, "-tls1_2", cert=False)
    assert anonymous.returncode != 0, anonymous.stderr


def test_an_mllp_client_over_tls_gets_its_ack_and_plain_tcp_stores_nothing(
    engine: Engine, tls_orders: tuple[int, dict[str, Path]]
) -> None:
    port, certs = tls_orders
    context = client_context(certs["ca"], certs["client_crt"], certs["client_key"])
    ack = send_message("127.0.0.1", port, orm("TLS1", accession="ACC-TLS"), ssl_context=context)
    assert (ack.code, ack.control_id) == ("AA", "TLS1")
    with pytest.raises(NoAckError):  # the same client without its certificate: mutual TLS
        send_message("127.0.0.1", port, orm("TLS2"), ssl_context=client_context(certs["ca"]))
    with session_scope(engine) as session:
        kept = session.scalar(select(OrderMessage).where(OrderMessage.control_id == "TLS1"))
        assert kept is not None and kept.ack_code == "AA"
        assert session.scalar(select(OrderMessage).where(OrderMessage.control_id == "TLS2")) is None
        before = session.scalar(select(func.count()).select_from(OrderMessage))

    # A sender that forgot TLS: its clear-text frame is a failed handshake, never an order.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x0b" + orm("PLAIN1").encode() + b"\x1c\x0d")
        try:
            answer = sock.recv(4096)
        except OSError:
            answer = b""
    assert b"MSA" not in answer
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(OrderMessage)) == before

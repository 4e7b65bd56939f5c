"""The listener's TLS per PS3.15 B.9 (BCP 195) with real clients: ``openssl s_client`` refused on
TLS 1.1 and on a non-AEAD TLS 1.2 suite, accepted on TLS 1.2 (an RFC 9325 suite) and TLS 1.3;
DCMTK ``echoscu`` accepted with a client certificate and refused without (mutual TLS)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from raddraft.settings import Settings
from raddraft.tls import BCP195_CIPHERS
from tests.certs import certificates
from tests.listener_process import ListenerProcess, echoscu


def s_client(port: int, certs: dict[str, Path], *options: str) -> subprocess.CompletedProcess[str]:
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"]
    command += ["-CAfile", str(certs["ca"]), "-cert", str(certs["client_crt"])]
    command += ["-key", str(certs["client_key"]), *options]
    return subprocess.run(command, input="", capture_output=True, text=True, timeout=30)


@pytest.fixture
def tls_listener(settings: Settings, tmp_path: Path) -> object:
    certs = certificates(tmp_path)
    env = {
        "RADDRAFT_TLS_CERT": str(certs["server_crt"]),
        "RADDRAFT_TLS_KEY": str(certs["server_key"]),
        "RADDRAFT_TLS_CA": str(certs["ca"]),
    }
    with ListenerProcess(tmp_path / "listener.log", env=env).start() as listener:
        yield listener, certs


def test_tls_versions_and_suites_follow_bcp195(
    tls_listener: tuple[ListenerProcess, dict[str, Path]],
) -> None:
    listener, certs = tls_listener
    # The client is allowed TLS 1.1 (security level 0), so a refusal is the listener's.
    old = s_client(listener.port, certs, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.returncode != 0
    assert "Protocol version: TLSv1.1" not in old.stdout + old.stderr
    assert "alert protocol version" in old.stderr or "unsupported protocol" in old.stderr, (
        old.stderr
    )

    twelve = s_client(listener.port, certs, "-tls1_2")
    assert twelve.returncode == 0, twelve.stderr
    assert "Protocol version: TLSv1.2" in twelve.stderr
    suite = next(line for line in twelve.stderr.splitlines() if line.startswith("Ciphersuite:"))
    assert suite.split(":", 1)[1].strip() in BCP195_CIPHERS.split(":")

    weak = s_client(listener.port, certs, "-tls1_2", "-cipher", "AES128-SHA:ECDHE-ECDSA-AES128-SHA")
    assert weak.returncode != 0
    assert "handshake failure" in weak.stderr or "no shared cipher" in weak.stderr, weak.stderr

    thirteen = s_client(listener.port, certs)  # both ends offer 1.3: it is chosen
    assert thirteen.returncode == 0, thirteen.stderr
    assert "Protocol version: TLSv1.3" in thirteen.stderr


def test_dcmtk_with_a_client_certificate_is_accepted_and_without_refused(
    tls_listener: tuple[ListenerProcess, dict[str, Path]],
) -> None:
    listener, certs = tls_listener
    with_cert = [
        "+tls",
        str(certs["client_key"]),
        str(certs["client_crt"]),
        "+cf",
        str(certs["ca"]),
    ]
    accepted = echoscu(listener.port, options=with_cert)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    anonymous = echoscu(listener.port, options=["+tla", "+cf", str(certs["ca"])])
    assert anonymous.returncode != 0
    # DCMTK's own BCP 195 profiles agree with ours; its retired unencrypted one is refused.
    for profile in ("+px", "+pz"):
        agreed = echoscu(listener.port, options=[*with_cert, profile])
        assert agreed.returncode == 0, profile + agreed.stdout + agreed.stderr
    unencrypted = echoscu(listener.port, options=[*with_cert, "+pn"])
    assert unencrypted.returncode != 0


def test_a_silent_tls_peer_does_not_stall_the_accept_loop(
    tls_listener: tuple[ListenerProcess, dict[str, Path]],
) -> None:
    """The handshake runs in the connection's thread (issue 20, item 5): two connections that
    never send a ClientHello held the accept loop 10 s each; a modality waited behind them."""
    listener, certs = tls_listener
    with_cert = [
        "+tls",
        str(certs["client_key"]),
        str(certs["client_crt"]),
        "+cf",
        str(certs["ca"]),
    ]
    silent = [socket.create_connection(("127.0.0.1", listener.port), timeout=30) for _ in range(2)]
    try:
        time.sleep(0.3)  # both accepted, their handshakes waiting
        started = time.monotonic()
        accepted = echoscu(listener.port, options=with_cert)
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        assert time.monotonic() - started < 5
    finally:
        for sock in silent:
            sock.close()

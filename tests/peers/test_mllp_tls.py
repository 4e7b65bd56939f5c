"""MLLP to the RIS over TLS (PS3.15 B.9 profile from raddraft/tls.py), against the real hl7apy
MLLP listener behind a TLS server socket: delivered with mutual TLS, refused when the RIS
only speaks TLS 1.1 or its certificate is not from the configured CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from peers import MllpSender, MllpTransientError
from peers._sender import Outbound
from raddraft.destinations import MllpTarget
from raddraft.settings import Settings
from raddraft.tls import server_context
from tests.certs import certificates
from tests.mllp_listener import serving_tls
from tests.peers.test_mllp import _message


def _settings(certs: dict[str, Path], ca: Path) -> Settings:
    return Settings(
        ris_mllp_tls=True,
        tls_ca=ca,
        tls_cert=certs["client_crt"],
        tls_key=certs["client_key"],
    )


def _outbound(tmp_path: Path, control_id: str) -> list[Outbound]:
    path = tmp_path / f"{control_id}.hl7"
    path.write_text(_message(control_id), encoding="utf-8")
    return [Outbound(control_id, path)]


def test_mllp_over_mutual_tls_is_delivered(tmp_path: Path) -> None:
    certs = certificates(tmp_path)
    context = server_context(certs["server_crt"], certs["server_key"], certs["ca"])
    with serving_tls(context) as (state, port):
        target = MllpSender.configured(
            MllpTarget.parse(f"127.0.0.1:{port}"), _settings(certs, certs["ca"])
        )
        assert target.ssl_context is not None
        delivery = target.send(_outbound(tmp_path, "RDTLS001"))
    assert delivery.delivered == ("RDTLS001",)
    assert len(state.received) == 1


def test_mllp_refuses_a_tls_1_1_ris_and_an_unknown_certificate(tmp_path: Path) -> None:
    certs = certificates(tmp_path)
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    legacy.load_cert_chain(certs["server_crt"], certs["server_key"])
    legacy.minimum_version = legacy.maximum_version = ssl.TLSVersion.TLSv1_1
    legacy.set_ciphers("DEFAULT@SECLEVEL=0")
    with serving_tls(legacy) as (state, port):
        target = MllpSender.configured(
            MllpTarget.parse(f"127.0.0.1:{port}"), _settings(certs, certs["ca"])
        )
        with pytest.raises(MllpTransientError):
            target.send(_outbound(tmp_path, "RDTLS002"))
    assert state.received == []

    (tmp_path / "other").mkdir()
    strangers = certificates(tmp_path / "other")
    context = server_context(strangers["server_crt"], strangers["server_key"])
    with serving_tls(context) as (state, port):
        target = MllpSender.configured(
            MllpTarget.parse(f"127.0.0.1:{port}"), _settings(certs, certs["ca"])
        )
        with pytest.raises(MllpTransientError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            target.send(_outbound(tmp_path, "RDTLS003"))
    assert state.received == []

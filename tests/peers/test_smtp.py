"""The SMTP target against a real SMTP server (aiosmtpd): 250 is the acknowledgement, 4xx and a
relay that is down are transient, 5xx permanent, and STARTTLS upgrades the session."""

from __future__ import annotations

import ssl
import subprocess
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from peers import Outbound, SmtpPermanentError, SmtpSender, SmtpTransientError
from tests.conftest import free_port


class Relay:
    """Answers DATA with ``reply`` and keeps what it accepted."""

    def __init__(self, reply: str = "250 OK queued") -> None:
        self.reply = reply
        self.accepted: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply.startswith("250"):
            self.accepted.append((list(envelope.rcpt_tos), envelope.content))
        return self.reply


def notice(tmp_path: Path, name: str = "n1.eml") -> Outbound:
    message = EmailMessage()
    message["From"] = "raddraft@hospital.test"
    message["To"] = "icu@hospital.test"
    message["Cc"] = "oncall@hospital.test"
    message["Subject"] = "[RadDraft] AI suspicion, pending review: pneumothorax"
    message["Message-ID"] = f"<{name}@raddraft>"
    message.set_content("AI suspicion of a critical finding (pneumothorax), pending review.")
    path = tmp_path / name
    path.write_bytes(bytes(message))
    return Outbound(message["Message-ID"], path)


def serve(relay: Relay, port: int, **kwargs: Any) -> Controller:
    controller = Controller(relay, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller


def test_a_notice_is_acknowledged_with_250(tmp_path: Path) -> None:
    relay, port = Relay(), free_port()
    controller = serve(relay, port)
    try:
        delivery = SmtpSender("127.0.0.1", port).send(
            [notice(tmp_path), notice(tmp_path, "n2.eml")]
        )
    finally:
        controller.stop()
    assert delivery.delivered == ("<n1.eml@raddraft>", "<n2.eml@raddraft>")
    assert delivery.detail["acks"]["<n1.eml@raddraft>"].startswith("250 OK queued")
    assert [sorted(r) for r, _ in relay.accepted] == [
        ["icu@hospital.test", "oncall@hospital.test"]
    ] * 2


@pytest.mark.parametrize(
    ("reply", "kind"),
    [("451 4.3.0 try again later", SmtpTransientError), ("554 5.7.1 refused", SmtpPermanentError)],
)
def test_negative_replies_are_classified(tmp_path: Path, reply: str, kind: type[Exception]) -> None:
    relay, port = Relay(reply), free_port()
    controller = serve(relay, port)
    try:
        with pytest.raises(kind) as raised:
            SmtpSender("127.0.0.1", port).send([notice(tmp_path)])
    finally:
        controller.stop()
    assert reply.split()[0] in str(raised.value)
    assert raised.value.failed == ("<n1.eml@raddraft>",)  # type: ignore[attr-defined]


def test_a_relay_that_is_down_is_transient(tmp_path: Path) -> None:
    with pytest.raises(SmtpTransientError):
        SmtpSender("127.0.0.1", free_port(), timeout=2).send([notice(tmp_path)])


def test_starttls_upgrades_the_session(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    relay, port = Relay(), free_port()
    controller = serve(relay, port, tls_context=server_tls, require_starttls=True)
    try:
        # Without STARTTLS the relay refuses (530): permanent, nothing accepted.
        with pytest.raises(SmtpPermanentError):
            SmtpSender("127.0.0.1", port).send([notice(tmp_path)])
        client_tls = ssl.create_default_context(cafile=str(cert))
        delivery = SmtpSender("127.0.0.1", port, starttls=True, ssl_context=client_tls).send(
            [notice(tmp_path)]
        )
    finally:
        controller.stop()
    assert delivery.delivered == ("<n1.eml@raddraft>",)
    assert len(relay.accepted) == 1

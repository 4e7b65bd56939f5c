"""A real HL7 v2 MLLP listener for tests (hl7apy's MLLPServer): answers AA, AE, AR, CR, a wrong
control id or nothing, as scripted, and keeps what it received.

It reads as a strict RIS does: every message it receives goes through hl7apy's strict
validation (:mod:`tests.hl7_strict`); one that fails is answered AE, and the test that ran the
listener fails when the listener stops, naming the message and why."""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hl7apy.mllp import AbstractHandler, MLLPServer

from peers.mllp import control_id_of
from raddraft.mllp import END_BLOCK, START_BLOCK
from tests.conftest import free_port
from tests.hl7_strict import strict_errors


class Listener:
    """What the listener answers next (a queue of codes, then ``default``), and what it got."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.default = "AA"
        self.received: list[str] = []
        self.invalid: list[str] = []  # what strict validation said of a message, with it
        self.lock = threading.Lock()
        #: Seconds each answer takes (a slow RIS); the message counts as received at arrival.
        self.delay = 0.0
        #: Codes for the next messages that contain a marker (e.g. a withdrawal's ``|X|``),
        #: before ``script``: ``{marker: [codes]}``.
        self.script_for: dict[str, list[str]] = {}

    def next_code(self, message: str) -> str:
        errors = strict_errors(message)
        with self.lock:
            self.received.append(message)
            if errors:
                self.invalid.append("\n".join([*errors, message.replace("\r", "\n")]))
                return "AE"
            for marker, codes in self.script_for.items():
                if codes and marker in message:
                    return codes.pop(0)
            return self.script.pop(0) if self.script else self.default

    def check(self) -> None:
        """Fail the test if any message received was refused by strict validation."""
        assert not self.invalid, "strict HL7 v2.5.1 validation failed:\n" + "\n\n".join(
            self.invalid
        )


def _ack(message: str, code: str) -> str:
    control_id = "WRONG" if code == "WRONG" else control_id_of(message)
    msa_code = "AA" if code == "WRONG" else code
    segments = [
        # Each ACK has its own control id (MSH-10), as a RIS gives it.
        "MSH|^~\\&|RIS|GH|RADDRAFT|GH|20250301093000||ACK^R01^ACK|"
        f"A{uuid.uuid4().hex[:12]}|P|2.5.1",
        f"MSA|{msa_code}|{control_id}|{'rejected by test' if code != 'AA' else ''}",
    ]
    return (START_BLOCK + "\r".join(segments).encode() + END_BLOCK).decode()


def _handler(listener: Listener) -> type[AbstractHandler]:
    class Handler(AbstractHandler):
        def reply(self) -> str:
            code = listener.next_code(self.incoming_message)
            if listener.delay:
                time.sleep(listener.delay)
            if code == "SILENT":
                time.sleep(1.5)  # longer than the client's time limit
                return ""
            return _ack(self.incoming_message, code)

    return Handler


@contextmanager
def serving(
    state: Listener, port: int, ssl_context: ssl.SSLContext | None = None
) -> Iterator[None]:
    """Run the listener on ``port`` until the block ends (a RIS that is up, then down); with
    ``ssl_context``, MLLP over TLS."""
    server = MLLPServer("127.0.0.1", port, {"ORU^R01^ORU_R01": (_handler(state),)}, timeout=5)
    server.daemon_threads = True
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    state.check()


@pytest.fixture
def listener() -> Iterator[tuple[Listener, int]]:
    state = Listener()
    port = free_port()
    with serving(state, port):
        yield state, port


@contextmanager
def serving_tls(ssl_context: ssl.SSLContext) -> Iterator[tuple[Listener, int]]:
    """The listener on a free loopback port, MLLP over TLS."""
    state = Listener()
    port = free_port()
    with serving(state, port, ssl_context):
        yield state, port

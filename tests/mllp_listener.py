"""A real HL7 v2 MLLP listener for tests (hl7apy's MLLPServer): answers AA, AE, AR, CR, a wrong
control id or nothing, as scripted, and keeps what it received."""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hl7apy.mllp import AbstractHandler, MLLPServer

from peers.mllp import END_BLOCK, START_BLOCK, control_id_of
from tests.conftest import free_port


class Listener:
    """What the listener answers next (a queue of codes, then ``default``), and what it got."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.default = "AA"
        self.received: list[str] = []
        self.lock = threading.Lock()
        #: Seconds each answer takes (a slow RIS); the message counts as received at arrival.
        self.delay = 0.0
        #: Codes for the next messages that contain a marker (e.g. a withdrawal's ``|X|``),
        #: before ``script``: ``{marker: [codes]}``.
        self.script_for: dict[str, list[str]] = {}

    def next_code(self, message: str) -> str:
        with self.lock:
            self.received.append(message)
            for marker, codes in self.script_for.items():
                if codes and marker in message:
                    return codes.pop(0)
            return self.script.pop(0) if self.script else self.default


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

"""The order listener: an MLLP server (HL7 v2 Implementation Guide, appendix C.4) for the RIS.

A receiver like the DICOM listener: it takes each framed message (``0x0B message 0x1C 0x0D``)
on a connection that may carry many, hands it to :func:`orders.receive.receive` (which stores it
before anything else) and answers with the framed ACK before reading the next, so the sender's
order of messages is kept. A frame that is not HL7 still gets an AR; bytes outside a frame are
ignored up to the next start block. What cannot be a message at all is still stored and
answered AR before the connection closes: a frame larger than ``RADDRAFT_ORDERS_MAX_MESSAGE_KB``
(its first 64 KiB kept), and a frame the sender ended (or went quiet on) without the end block.

With ``RADDRAFT_ORDERS_TLS_CERT``/``KEY`` the connection is TLS per PS3.15 B.9 (BCP 195,
:mod:`raddraft.tls`: TLS 1.2 minimum, 1.3 preferred), with ``RADDRAFT_ORDERS_TLS_CA`` mutual TLS;
the handshake runs in the connection's own thread, so a client that never finishes it holds
only that thread until the idle timeout.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time

from orders.receive import receive
from raddraft.logging import kv
from raddraft.settings import Settings
from raddraft.tls import server_context

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: How much of an oversized frame is stored beside its AR: enough to read who sent what.
KEPT_OF_OVERSIZED = 64 * 1024
#: How long a refused sender's remaining bytes are read (and dropped) before the close.
DRAIN_SECONDS = 2.0


def _frames(buffer: bytearray) -> list[bytes]:
    """Complete frames taken off the front of ``buffer``."""
    found: list[bytes] = []
    while True:
        start = buffer.find(START_BLOCK)
        if start < 0:
            buffer.clear()
            return found
        end = buffer.find(END_BLOCK, start)
        if end < 0:
            del buffer[:start]
            return found
        found.append(bytes(buffer[start + 1 : end]))
        del buffer[: end + len(END_BLOCK)]


def as_text(data: bytes) -> str:
    """The frame as text to store: UTF-8 (ASCII is a subset) or, failing that, ISO 8859-1, which
    maps every byte to one character, so nothing is lost either way (HL7 v2 MSH-18 names the
    character set; 8859/1 is the usual other one). NUL, which no database text column holds, is
    stored as U+FFFD."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\x00", "\ufffd")


class _Handler(socketserver.BaseRequestHandler):
    server: OrderServer

    def setup(self) -> None:
        self.peer = f"{self.client_address[0]}:{self.client_address[1]}"
        self.request.settimeout(self.server.idle_timeout)
        self.sock: socket.socket = self.request

    def handle(self) -> None:
        if self.server.tls is not None:
            try:
                self.sock = self.server.tls.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError) as error:
                log.warning("order TLS handshake refused %s", kv(peer=self.peer, why=error))
                return
        self.limit = self.server.settings.orders_max_message_kb * 1024
        buffer = bytearray()
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:  # idle timeout or reset: a frame begun is still kept
                self._unfinished(buffer, "the sender went quiet before the end block")
                return
            if not chunk:
                self._unfinished(buffer, "the connection ended before the end block")
                return
            buffer.extend(chunk)
            # Look for frames only when this chunk (or its seam) holds an end block: a frame of
            # many chunks is then scanned once, not once per chunk.
            if END_BLOCK in buffer[-(len(chunk) + 1) :]:
                for data in _frames(buffer):
                    self._take(data)
            if len(buffer) > self.limit:
                self._refuse(buffer, f"message larger than {self.limit // 1024} KiB; refused")
                self._drain()
                return

    def _take(self, data: bytes) -> None:
        if len(data) > self.limit:  # whole, but too large: refused, the framing still holds
            self._refuse(data, f"message larger than {self.limit // 1024} KiB; refused", 0)
        else:
            self._answer(receive(as_text(data), self.peer, self.server.settings))

    def _answer(self, ack: str) -> None:
        try:
            self.sock.sendall(START_BLOCK + ack.encode("utf-8") + END_BLOCK)
        except OSError:
            log.warning("order ACK not delivered %s", kv(peer=self.peer))

    def _refuse(self, frame: bytes | bytearray, why: str, skip: int = 1) -> None:
        """Store what came of a frame that cannot be taken (after ``skip`` bytes: the start
        block of an unfinished one) and answer AR."""
        log.warning("order frame refused %s", kv(peer=self.peer, why=why, bytes=len(frame)))
        kept = as_text(bytes(frame[skip : skip + KEPT_OF_OVERSIZED]))
        self._answer(receive(kept, self.peer, self.server.settings, refused=why))

    def _drain(self) -> None:
        """Read what the sender still sends, for a moment, before closing: closing on unread
        bytes resets the connection, and the reset can overtake the AR on its way."""
        deadline = time.monotonic() + DRAIN_SECONDS
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(65536):
                    return
        except OSError:
            return

    def _unfinished(self, buffer: bytearray, why: str) -> None:
        if buffer.strip(b"\r\n\t "):
            self._refuse(buffer, why)
            self._drain()


class OrderServer(socketserver.ThreadingTCPServer):
    """The threaded MLLP server; one thread per connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: Settings, *, idle_timeout: float = 300.0) -> None:
        self.settings = settings
        self.idle_timeout = idle_timeout
        self.tls: ssl.SSLContext | None = None
        if settings.orders_tls_cert and settings.orders_tls_key:
            self.tls = server_context(
                settings.orders_tls_cert, settings.orders_tls_key, settings.orders_tls_ca
            )
        super().__init__((settings.orders_host, settings.orders_port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> threading.Thread:
        """Serve in a background thread; ``raddraft orders`` waits for a signal meanwhile."""
        thread = threading.Thread(target=self.serve_forever, name="orders-mllp", daemon=True)
        thread.start()
        return thread

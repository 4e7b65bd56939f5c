"""The order listener: an MLLP server (HL7 v2 Implementation Guide, appendix C.4) for the RIS.

A receiver like the DICOM listener: it takes each framed message (``0x0B message 0x1C 0x0D``)
on a connection that may carry many, hands it to :func:`orders.receive.receive` (which stores it
before anything else) and answers with the framed ACK before reading the next, so the sender's
order of messages is kept. A frame that is not HL7 still gets an AR; bytes outside a frame are
ignored up to the next start block.
"""

from __future__ import annotations

import logging
import socketserver
import threading

from orders.receive import receive
from raddraft.logging import kv
from raddraft.settings import Settings

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: A message larger than this is refused (the connection is closed): a runaway sender.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


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


class _Handler(socketserver.BaseRequestHandler):
    server: OrderServer

    def handle(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        self.request.settimeout(self.server.idle_timeout)
        buffer = bytearray()
        while True:
            try:
                chunk = self.request.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer.extend(chunk)
            if len(buffer) > MAX_MESSAGE_BYTES:
                log.warning("order message too large; connection closed %s", kv(peer=peer))
                return
            for data in _frames(buffer):
                text = data.decode("utf-8", errors="replace")
                answer = receive(text, peer, self.server.settings)
                self.request.sendall(START_BLOCK + answer.encode("utf-8") + END_BLOCK)


class OrderServer(socketserver.ThreadingTCPServer):
    """The threaded MLLP server; one thread per connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, settings: Settings, *, idle_timeout: float = 300.0) -> None:
        self.settings = settings
        self.idle_timeout = idle_timeout
        super().__init__((settings.orders_host, settings.orders_port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> threading.Thread:
        """Serve in a background thread; ``raddraft orders`` waits for a signal meanwhile."""
        thread = threading.Thread(target=self.serve_forever, name="orders-mllp", daemon=True)
        thread.start()
        return thread

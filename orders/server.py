"""The order listener: an MLLP server (HL7 v2 Implementation Guide, appendix C.4) for the RIS.

A receiver like the DICOM listener: it takes each framed message (``0x0B message 0x1C 0x0D``)
on a connection that may carry many, hands it to :func:`orders.receive.receive` (which stores it
before anything else) and answers with the framed ACK before reading the next, so the sender's
order of messages is kept. One frame holds one message: a frame of several is stored whole and
answered AR (one ACK cannot answer two). A frame that is not HL7 still gets an AR; bytes outside
a frame are dropped and logged. What cannot be a message at all is still stored and answered AR
before the connection closes: a frame larger than ``RADDRAFT_ORDERS_MAX_MESSAGE_KB`` (its first
64 KiB kept), and a frame the sender ended (or went quiet on) without the end block; a frame cut
off by the next start block is stored and answered AR, and the next one read.

With ``RADDRAFT_ORDERS_TLS_CERT``/``KEY`` the connection is TLS per PS3.15 B.9 (BCP 195,
:mod:`raddraft.tls`: TLS 1.2 minimum, 1.3 preferred), with ``RADDRAFT_ORDERS_TLS_CA`` mutual TLS;
the handshake runs in the connection's own thread, so a client that never finishes it holds
only that thread until the idle timeout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any

from orders.receive import receive
from raddraft.logging import kv
from raddraft.mllp import END_BLOCK, START_BLOCK, Deframer, Frame
from raddraft.settings import Settings
from raddraft.tls import server_context

log = logging.getLogger(__name__)

#: How much of an oversized frame is stored beside its AR: enough to read who sent what.
KEPT_OF_OVERSIZED = 64 * 1024
#: How long a refused sender's remaining bytes are read (and dropped) before the close.
DRAIN_SECONDS = 2.0


_CUT_OFF = "a start block came before this frame's end block (MLLP: one message per frame)"


def messages_in(data: bytes) -> int:
    """How many HL7 v2 messages a frame holds: its segments that are message headers (MSH,
    or the batch and file headers BHS/FHS, HL7 v2.5.1 2.10.3)."""
    count = 0
    for segment in data.replace(b"\n", b"\r").split(b"\r"):
        if segment[:3] in (b"MSH", b"BHS", b"FHS"):
            count += 1
    return count


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


def _load_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _load_malloc_trim()


def _give_back_memory() -> None:
    """Hand freed heap pages back to the system once a connection is gone.

    A frame grows in a bytearray of up to ``RADDRAFT_ORDERS_MAX_MESSAGE_KB``; glibc serves
    such blocks from per-thread arenas once a large block has been freed (its mmap threshold
    rises), and keeps those pages after ``free``. Four rounds of twenty 1.9 MB unfinished frames
    (from twenty addresses, started at 92 MB): 124, 166, 164, 182 MB after their connections
    closed, still growing; with ``malloc_trim(0)``, which releases the free pages of every arena
    (a few milliseconds, once per closed connection), 119, 138, 135, 132 MB."""
    if _malloc_trim is not None:
        _malloc_trim(0)


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
        # All of a frame that may be taken is kept, and of a larger one what is stored.
        framer = Deframer(max(self.limit, KEPT_OF_OVERSIZED), cut_at_start=True)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:  # idle timeout or reset: a frame begun is still kept
                self._log_dropped(framer)
                self._unfinished(framer, "the sender went quiet before the end block")
                return
            if not chunk:
                self._log_dropped(framer)
                self._unfinished(framer, "the connection ended before the end block")
                return
            for frame in framer.feed(chunk):
                self._take(frame)
            self._log_dropped(framer)
            if _received(framer) > self.limit:
                why = f"message larger than {self.limit // 1024} KiB; refused"
                self._refuse(framer.unfinished(), _received(framer), why)
                framer.discard()  # the connection's memory goes back now, not at close
                self._drain()
                return

    def _take(self, frame: Frame) -> None:
        if frame.cut_off:  # cut off by the next start block: kept and refused, the next goes on
            self._refuse(frame.data, frame.size, _CUT_OFF)
        elif frame.size > self.limit:  # whole, but too large: refused, the framing still holds
            why = f"message larger than {self.limit // 1024} KiB; refused"
            self._refuse(frame.data, frame.size, why)
        elif (count := messages_in(frame.data)) > 1:
            # One frame, one message (HL7 v2.5.1 IG C.4.2): one ACK could not answer both, and
            # taking the first alone lost the second. Kept whole and refused; the sender sends
            # each in its own frame.
            why = f"the frame holds {count} messages; MLLP carries one per frame, none taken"
            self._refuse(frame.data, frame.size, why, whole=True)
        else:
            self._answer(receive(as_text(frame.data), self.peer, self.server.settings))

    def _answer(self, ack: str) -> None:
        # Not raddraft.mllp.frame: it would refuse (raise on) framing bytes an ACK echoes from
        # the sender's MSH, and the sender must still get its answer.
        try:
            self.sock.sendall(START_BLOCK + ack.encode("utf-8") + END_BLOCK)
        except OSError:
            log.warning("order ACK not delivered %s", kv(peer=self.peer))

    def _refuse(self, data: bytes, size: int, why: str, *, whole: bool = False) -> None:
        """Store what came of a frame of ``size`` bytes that cannot be taken (``data``, its
        beginning; the first 64 KiB unless ``whole``) and answer AR."""
        log.warning("order frame refused %s", kv(peer=self.peer, why=why, bytes=size))
        kept = as_text(data if whole else data[:KEPT_OF_OVERSIZED])
        self._answer(receive(kept, self.peer, self.server.settings, refused=why))

    def _log_dropped(self, framer: Deframer) -> None:
        """Bytes outside a frame are no message and get no answer (there is no MSH to answer);
        they are said in the log, so a sender that forgot the start block can be found. Line
        ends between frames, which some senders add, only at debug level."""
        count, head = framer.take_skipped()
        if count:
            level = logging.WARNING if head.strip(b"\r\n\t ") else logging.DEBUG
            log.log(
                level,
                "bytes outside an MLLP frame dropped %s",
                kv(peer=self.peer, bytes=count, first=repr(head[:32])),
            )

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

    def _unfinished(self, framer: Deframer, why: str) -> None:
        if framer.in_frame:
            self._refuse(framer.unfinished(), _received(framer), why)
            self._drain()


def _received(framer: Deframer) -> int:
    """The bytes received of the unfinished frame, its start block too: what the limit and the
    log count (0 outside a frame)."""
    return len(START_BLOCK) + framer.pending if framer.in_frame else 0


class OrderServer(socketserver.ThreadingTCPServer):
    """The threaded MLLP server; one thread per connection, at most
    ``RADDRAFT_ORDERS_MAX_CONNECTIONS`` of them and ``RADDRAFT_ORDERS_MAX_CONNECTIONS_PER_PEER``
    from one address, so the frames held in memory are bounded by those times
    ``RADDRAFT_ORDERS_MAX_MESSAGE_KB`` (twenty senders of 15 MB unfinished frames took the
    listener from 105 to 661 MB, issue 20)."""

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
        self._open: dict[int, str] = {}  # id(request socket) -> peer address
        self._open_lock = threading.Lock()
        super().__init__((settings.orders_host, settings.orders_port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """A connection beyond the caps is closed at accept, before a thread or a buffer is
        spent on it; the sender retries later (MLLP has no refusal before a message)."""
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        with self._open_lock:
            total = len(self._open)
            mine = sum(1 for peer in self._open.values() if peer == host)
            if total >= self.settings.orders_max_connections:
                why = f"{total} connections open (RADDRAFT_ORDERS_MAX_CONNECTIONS)"
            elif mine >= self.settings.orders_max_connections_per_peer:
                why = f"{mine} connections open from it (RADDRAFT_ORDERS_MAX_CONNECTIONS_PER_PEER)"
            else:
                self._open[id(request)] = host
                return True
        log.warning("order connection refused %s", kv(peer=host, why=why))
        return False

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.pop(id(request), None)
        super().shutdown_request(request)
        _give_back_memory()

    def open_connections(self) -> int:
        """Connections being served now (tests and the fuzz bench watch this)."""
        with self._open_lock:
            return len(self._open)

    def start(self) -> threading.Thread:
        """Serve in a background thread; ``raddraft orders`` waits for a signal meanwhile."""
        thread = threading.Thread(target=self.serve_forever, name="orders-mllp", daemon=True)
        thread.start()
        return thread

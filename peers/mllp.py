"""MLLP client: send one HL7 v2 message and check its acknowledgement.

Minimal Lower Layer Protocol (HL7 v2.5.1 Implementation Guide, appendix C.4): the framing is
:mod:`raddraft.mllp`'s, shared with the orders server. After sending, the client waits for the
ACK before anything else; MSA-1 (HL7 table 0008) must be AA (or CA) and MSA-2 must echo the
message's MSH-10.

Failures are typed so a caller can decide on retries:

- :class:`NoAckError` (also a :class:`TimeoutError`): no connection, no answer within the time
  limit, or the connection closed before a whole frame came back. Transient.
- :class:`RejectedError`: a negative ACK. AE / AR / CE are transient (the RIS may take the message
  later, as issue 5 asks for retries); CR (commit reject) is permanent.
- :class:`AckMismatchError`: an answer that is not an ACK of this message. Permanent.

:func:`send_with_retries` retries transient failures with exponential backoff.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from raddraft.mllp import Deframer, frame

#: The longest acknowledgement read: an ACK is a few hundred bytes; a peer sending more is not
#: answering this message.
MAX_ACK_BYTES = 1024 * 1024

#: MSA-1 codes: accepted, and the negative ones retried (HL7 table 0008).
ACCEPT_CODES = frozenset({"AA", "CA"})
TRANSIENT_REJECT_CODES = frozenset({"AE", "AR", "CE"})


class MLLPError(Exception):
    """A message that did not get a positive ACK; ``transient`` says whether to retry."""

    transient: bool = False


class NoAckError(MLLPError, TimeoutError):
    """No acknowledgement: connection refused, timed out, or closed early."""

    transient = True


class RejectedError(MLLPError):
    """A negative acknowledgement (MSA-1 AE, AR, CE or CR)."""

    def __init__(self, code: str, control_id: str, text: str = "") -> None:
        super().__init__(f"message {control_id} rejected with {code}: {text}".rstrip(": "))
        self.code = code
        self.control_id = control_id
        self.text = text
        self.transient = code in TRANSIENT_REJECT_CODES


class AckMismatchError(MLLPError):
    """An answer that is no ACK of the message sent (no MSA, another control id)."""


@dataclass(frozen=True)
class Ack:
    """A parsed acknowledgement: MSA-1, MSA-2, MSA-3 and the raw ER7 text."""

    code: str
    control_id: str
    text: str
    raw: str


def control_id_of(message: str) -> str:
    """MSH-10 of an ER7 message."""
    msh = message.replace("\n", "\r").split("\r", 1)[0]
    if not msh.startswith("MSH") or len(msh) < 4:
        raise ValueError("the message does not start with an MSH segment")
    fields = msh.split(msh[3])
    # MSH-1 is the separator itself, so MSH-n is fields[n - 1].
    if len(fields) < 10 or not fields[9]:
        raise ValueError("the message has no MSH-10 control id")
    return fields[9]


def parse_ack(raw: str) -> Ack:
    """MSA-1..3 of an ACK in ER7."""
    segments = [s for s in raw.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        raise AckMismatchError(f"answer is not an HL7 message: {raw[:80]!r}")
    separator = segments[0][3]
    for segment in segments:
        fields = segment.split(separator)
        if fields[0] == "MSA":
            code = fields[1] if len(fields) > 1 else ""
            control_id = fields[2] if len(fields) > 2 else ""
            text = fields[3] if len(fields) > 3 else ""
            return Ack(code=code, control_id=control_id, text=text, raw=raw)
    raise AckMismatchError(f"answer has no MSA segment: {raw[:80]!r}")


def _read_frame(sock: socket.socket, deadline: float) -> bytes:
    # A start block never occurs inside a message: one inside the answer cuts it off.
    deframer = Deframer(MAX_ACK_BYTES, cut_at_start=True)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoAckError("no ACK within the time limit")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise NoAckError("no ACK within the time limit") from None
        if not chunk:
            raise NoAckError("connection closed before a complete ACK")
        frames = deframer.feed(chunk)
        if frames:
            if frames[0].cut_off:
                raise AckMismatchError("answer cut off by a new MLLP start block")
            if frames[0].too_large:
                raise AckMismatchError(f"answer longer than {MAX_ACK_BYTES} bytes")
            return frames[0].data
        if deframer.stray_end:
            raise AckMismatchError("answer is not MLLP framed")
        if deframer.too_large_pending:
            raise AckMismatchError(f"answer longer than {MAX_ACK_BYTES} bytes")


def send_message(
    host: str,
    port: int,
    message: str,
    *,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    encoding: str = "utf-8",
) -> Ack:
    """Send one message on a new connection and return its positive ACK.

    ``timeout`` bounds connecting plus waiting for the ACK. Raises :class:`NoAckError`,
    :class:`RejectedError` or :class:`AckMismatchError` (all :class:`MLLPError`).
    """
    control_id = control_id_of(message)
    payload = frame(message, encoding)
    deadline = time.monotonic() + timeout
    try:
        raw_sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise NoAckError(f"cannot connect to {host}:{port}: {exc}") from exc
    try:
        try:
            sock: socket.socket = (
                ssl_context.wrap_socket(raw_sock, server_hostname=host) if ssl_context else raw_sock
            )
        except OSError as exc:  # ssl.SSLError too: a refused handshake is no ACK, not a crash
            raise NoAckError(f"TLS with {host}:{port} failed: {exc}") from exc
        with sock:
            try:
                sock.sendall(payload)
                answer = _read_frame(sock, deadline)
            except NoAckError:
                raise
            except OSError as exc:
                raise NoAckError(f"connection to {host}:{port} failed: {exc}") from exc
    finally:
        raw_sock.close()
    ack = parse_ack(answer.decode(encoding, errors="replace"))
    if ack.control_id != control_id:
        raise AckMismatchError(f"ACK is for control id {ack.control_id!r}, sent {control_id!r}")
    if ack.code not in ACCEPT_CODES:
        raise RejectedError(ack.code, control_id, ack.text)
    return ack


def send_with_retries(
    host: str,
    port: int,
    message: str,
    attempts: int = 3,
    backoff: float = 1.0,
    *,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Ack:
    """:func:`send_message`, retried on transient failures: waits ``backoff * 2**n`` seconds
    before retry n+1; a permanent failure or the last transient one is raised."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(attempts):
        try:
            return send_message(host, port, message, timeout=timeout, ssl_context=ssl_context)
        except MLLPError as exc:
            if not exc.transient or attempt == attempts - 1:
                raise
            sleep(backoff * (2**attempt))
    raise AssertionError("unreachable")  # pragma: no cover

"""MLLP framing, once, for the RIS client (:mod:`peers.mllp`) and the orders server (:mod:`orders`).

Minimal Lower Layer Protocol (HL7 v2.5.1 Implementation Guide, appendix C.4): a message travels
as ``0x0B <message> 0x1C 0x0D``. :func:`frame` writes one; :class:`Deframer` takes bytes as
they arrive and gives back the complete messages, holding at most ``max_frame`` bytes of the
message being read, so no sender can make a reader's memory grow without bound. Pure: no
sockets, no settings.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["END_BLOCK", "SKIPPED_HEAD", "START_BLOCK", "Deframer", "Frame", "frame"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
_FS = END_BLOCK[0]
_CR = END_BLOCK[1:]
#: How many of the skipped bytes :meth:`Deframer.take_skipped` gives back: enough to tell a
#: sender that forgot the start block from line ends between frames.
SKIPPED_HEAD = 32


def frame(message: str | bytes, encoding: str = "utf-8") -> bytes:
    """The MLLP frame of one message; segment separators are normalized to CR (HL7 v2.5.1
    2.5.4: segments end with a carriage return)."""
    data = message.encode(encoding) if isinstance(message, str) else message
    data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    if START_BLOCK in data or b"\x1c" in data:
        raise ValueError("the message contains MLLP framing bytes")
    return START_BLOCK + data + END_BLOCK


@dataclass(frozen=True)
class Frame:
    """One message taken off the wire: its bytes (only the first ``max_frame`` when
    ``too_large``) and its whole length; ``cut_off`` when a start block came before its end
    block (read with ``cut_at_start``), so it may be only the beginning of a message."""

    data: bytes
    size: int
    cut_off: bool = False

    @property
    def too_large(self) -> bool:
        """Longer than the deframer's ``max_frame``: ``data`` holds its beginning only."""
        return self.size > len(self.data)


class Deframer:
    """Incremental MLLP reader: :meth:`feed` each chunk received, get the frames it completed.

    Bytes outside a frame are skipped (``skipped`` counts them; ``stray_end`` says whether an
    end block was among them, which a client reading an answer treats as no MLLP at all). Of
    the frame being read at most ``max_frame`` bytes are kept; the rest is counted, not stored,
    and the frame comes out ``too_large`` when its end block arrives. ``too_large_pending``
    lets a server give up on such a frame before then.

    With ``cut_at_start`` (a server's reading: one message per frame, HL7 v2.5.1 IG C.4.2) a
    start block inside a frame ends that frame, which comes out ``cut_off``, and begins the
    next; without it (a client reading one answer) the byte is part of the frame.
    """

    def __init__(self, max_frame: int, *, cut_at_start: bool = False) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be at least 1")
        self.max_frame = max_frame
        self.cut_at_start = cut_at_start
        self.skipped = 0
        self.stray_end = False
        self._skipped_since = 0
        self._skipped_head = b""
        self._in_frame = False
        self._kept = bytearray()
        self._dropped = 0
        self._last = -1  # the last byte seen, to find an end block split across two chunks

    @property
    def in_frame(self) -> bool:
        """A start block has come and its end block not yet."""
        return self._in_frame

    @property
    def pending(self) -> int:
        """How long the unfinished frame is so far (0 outside a frame)."""
        return len(self._kept) + self._dropped if self._in_frame else 0

    @property
    def too_large_pending(self) -> bool:
        """The unfinished frame is already longer than ``max_frame``."""
        return self._in_frame and self._dropped > 0

    def unfinished(self) -> bytes:
        """The kept beginning of the unfinished frame (``b""`` outside a frame)."""
        return bytes(self._kept) if self._in_frame else b""

    def take_skipped(self) -> tuple[int, bytes]:
        """(bytes skipped since the last call, the first ``SKIPPED_HEAD`` of them), for a
        reader's log; counting starts anew (``skipped`` keeps the whole count)."""
        found = (self._skipped_since, self._skipped_head)
        self._skipped_since, self._skipped_head = 0, b""
        return found

    def discard(self) -> None:
        """Give up the unfinished frame (or leave the one just taken): its bytes are forgotten,
        their memory freed now, and the reader stands outside a frame."""
        self._in_frame = False
        self._kept = bytearray()
        self._dropped = 0
        self._last = -1

    def feed(self, data: bytes) -> list[Frame]:
        """Take ``data``; return the frames it completed, in order."""
        frames: list[Frame] = []
        while data:
            if not self._in_frame:
                data = self._skip_to_start(data)
                continue
            seam = self._last == _FS and data[:1] == _CR
            end = -1 if seam else data.find(END_BLOCK)
            cut = -1 if seam else self._start_before(data, end)
            if seam:
                self._unkeep_last()
                data = data[1:]
            elif cut >= 0:  # the frame ends here, and the start block begins the next
                self._keep(data[:cut])
                data = data[cut:]
            elif end < 0:
                self._keep(data)
                break
            else:
                self._keep(data[:end])
                data = data[end + len(END_BLOCK) :]
            frames.append(Frame(bytes(self._kept), len(self._kept) + self._dropped, cut >= 0))
            self.discard()
        return frames

    def _skip_to_start(self, data: bytes) -> bytes:
        start = data.find(START_BLOCK)
        outside = data if start < 0 else data[:start]
        if END_BLOCK in outside or (self._last == _FS and outside[:1] == _CR):
            self.stray_end = True
        self.skipped += len(outside)
        self._skipped_since += len(outside)
        if len(self._skipped_head) < SKIPPED_HEAD:
            self._skipped_head += outside[: SKIPPED_HEAD - len(self._skipped_head)]
        if start < 0:
            self._last = data[-1]
            return b""
        self._in_frame = True
        self._last = -1
        return data[start + 1 :]

    def _start_before(self, data: bytes, end: int) -> int:
        """Where a start block stands in ``data`` before ``end`` (-1: none, or not cutting)."""
        if not self.cut_at_start:
            return -1
        return data.find(START_BLOCK, 0, end if end >= 0 else len(data))

    def _keep(self, part: bytes) -> None:
        if not part:
            return
        room = max(0, self.max_frame - len(self._kept))
        self._kept += part[:room]
        self._dropped += max(0, len(part) - room)
        self._last = part[-1]

    def _unkeep_last(self) -> None:
        """The frame's last byte was the first half of the end block."""
        if self._dropped:
            self._dropped -= 1
        else:
            del self._kept[-1]

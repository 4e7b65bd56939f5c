"""Bounds on what one received data set may cost, checked before pydicom parses it.

pydicom parses nested sequences recursively, so a data set of a few kilobytes nesting
sequences thousands deep raises ``RecursionError`` inside the listener (the "recursion bomb"
fuzzers found in several toolkits); compressed pixel data declares its decoded size only in
Rows, Columns, Samples per Pixel, Bits Allocated and Number of Frames (PS3.3 C.7.6.3), which
a hostile sender can set to terabytes. :func:`check_file` walks the encoded data set once,
iteratively and without decoding any value it does not need, and raises :class:`OverLimit`
before any of that happens:

- the file (or, for Deflated Explicit VR Little Endian, PS3.5 A.5, the inflated stream) is
  larger than ``max_dataset_bytes``: 0xA700 (refused, out of resources);
- Pixel Data would decode to more than ``max_pixel_bytes``: 0xA700;
- sequences nest deeper than ``max_sequence_depth``: 0xC000 (cannot understand);
- an element declares more bytes than the file holds (a lying length): 0xC000;
- the body is not encoded as its transfer syntax says (:class:`EncodingMismatch`, 0xC000): an
  element without a valid explicit VR in an explicit VR syntax (an implicit VR body sent in an
  explicit VR presentation context), native Pixel Data in an encapsulated (compressed) syntax
  or encapsulated Pixel Data in a native one (PS3.5 A.4, 8.2). pydicom reads such a body
  anyway; DCMTK and every other reader refuse it, so it must never reach the archive.

The walk follows PS3.5 7.1 (data element encoding), 7.5 (nesting of data sets: items and
delimiters, defined and undefined lengths), 6.2.2 (UN of undefined length holds implicit VR
little endian) and A.4 (encapsulated pixel data fragments).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

from raddraft.settings import Settings

__all__ = ["EncodingMismatch", "Limits", "OverLimit", "check_file"]

OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: The transfer syntaxes whose Pixel Data is native (PS3.5 A.1-A.3, A.5); the other standard
#: ones encapsulate it in fragments (PS3.5 A.4).
_NATIVE = frozenset({_IMPLICIT, "1.2.840.10008.1.2.1", _DEFLATED, _BIG_ENDIAN})
#: Every VR of PS3.5 Table 6.2-1; two upper case letters that are none of these are no VR.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)
# The Image Pixel module attributes that size the decoded pixel data (PS3.3 C.7.6.3).
_ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES = (
    0x00280010,
    0x00280011,
    0x00280002,
    0x00280100,
    0x00280008,
)
_SIZING = frozenset((_ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES))
_MB = 1024 * 1024


class OverLimit(ValueError):
    """The data set breaks one of :class:`Limits`; ``status`` is the C-STORE answer."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class EncodingMismatch(OverLimit):
    """The body is not encoded as its transfer syntax (the presentation context's) says:
    0xC000 "cannot understand" (PS3.4 B.2.3), quarantined."""

    def __init__(self, why: str) -> None:
        super().__init__(CANNOT_UNDERSTAND, f"data set does not match its transfer syntax: {why}")


@dataclass(frozen=True)
class Limits:
    """What one data set may cost; ``from_settings`` reads the ``RADDRAFT_MAX_*`` settings."""

    max_dataset_bytes: int = 1024 * _MB
    max_pixel_bytes: int = 1024 * _MB
    max_sequence_depth: int = 32

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_dataset_bytes=settings.max_dataset_mb * _MB,
            max_pixel_bytes=settings.max_pixel_data_mb * _MB,
            max_sequence_depth=settings.max_sequence_depth,
        )


class _Reader(Protocol):
    position: int

    def read(self, size: int) -> bytes: ...

    def skip(self, size: int) -> None: ...

    def remaining(self) -> int | None: ...


class _FileReader:
    def __init__(self, file: BinaryIO, size: int) -> None:
        self.file = file
        self.size = size
        self.position = file.tell()

    def read(self, size: int) -> bytes:
        data = self.file.read(size)
        self.position += len(data)
        return data

    def skip(self, size: int) -> None:
        self.position += size
        self.file.seek(self.position)

    def remaining(self) -> int | None:
        return self.size - self.position


class _InflatingReader:
    """The deflated data set inflated as it is read, never more than ``limit`` bytes."""

    def __init__(self, file: BinaryIO, limit: int) -> None:
        self.file = file
        self.limit = limit
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buffer = b""
        self.position = 0

    def _fill(self, size: int) -> None:
        while len(self.buffer) < size:
            if self.inflater.unconsumed_tail:
                chunk = self.inflater.unconsumed_tail
            else:
                chunk = self.file.read(1 << 16)
                if not chunk:
                    self.buffer += self.inflater.flush()
                    return
            try:
                self.buffer += self.inflater.decompress(chunk, 1 << 20)
            except zlib.error as error:
                raise OverLimit(
                    CANNOT_UNDERSTAND, f"deflated data set is corrupt: {error}"
                ) from None
            if self.position + len(self.buffer) > self.limit:
                raise OverLimit(
                    OUT_OF_RESOURCES,
                    f"deflated data set inflates beyond the {self.limit} byte limit",
                )

    def read(self, size: int) -> bytes:
        self._fill(size)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        self.position += len(data)
        return data

    def skip(self, size: int) -> None:
        while size > 0:
            step = min(size, 1 << 20)
            got = len(self.read(step))
            if got < step:
                return
            size -= step

    def remaining(self) -> int | None:
        return None


@dataclass
class _Open:
    """One open sequence, item or encapsulated pixel data on the walk's stack."""

    end: int | None  # absolute end for a defined length, None for undefined
    kind: str  # "sequence" | "item" | "fragments"
    implicit: bool


@dataclass
class _Walk:
    reader: _Reader
    little: bool
    implicit: bool
    limits: Limits
    stack: list[_Open]
    sizing: dict[int, int]
    #: True/False: the syntax encapsulates Pixel Data or not; None: a private syntax, unchecked.
    encapsulated: bool | None = None


def check_file(path: Path, limits: Limits) -> None:
    """Raise :class:`OverLimit` when the DICOM file at ``path`` breaks ``limits``.

    A file without the ``DICM`` prefix or with a malformed file meta group is left for pydicom
    to reject with its own message; this check only bounds what parsing would cost.
    """
    size = path.stat().st_size
    if size > limits.max_dataset_bytes:
        raise OverLimit(
            OUT_OF_RESOURCES,
            f"data set of {size} bytes is above the {limits.max_dataset_bytes} byte limit",
        )
    with path.open("rb") as file:
        if file.read(132)[128:] != b"DICM":
            return
        syntax = _file_meta_syntax(file, size)
        if syntax is None:
            return
        reader: _Reader
        if syntax == _DEFLATED:
            reader = _InflatingReader(file, limits.max_dataset_bytes)
        else:
            reader = _FileReader(file, size)
        walk = _Walk(
            reader,
            little=syntax != _BIG_ENDIAN,
            implicit=syntax == _IMPLICIT,
            limits=limits,
            stack=[],
            sizing={},
            encapsulated=_encapsulated(syntax),
        )
        _walk(walk)
    _check_pixels(walk.sizing, limits)


def _encapsulated(syntax: str) -> bool | None:
    if syntax in _NATIVE:
        return False
    if UID(syntax).is_transfer_syntax:
        return True
    return None


def _file_meta_syntax(file: BinaryIO, size: int) -> str | None:
    """The Transfer Syntax UID from the file meta group (always explicit VR LE, PS3.10 7.1)."""
    syntax = None
    while True:
        start = file.tell()
        head = file.read(8)
        if len(head) < 8:
            return syntax
        group, _element = struct.unpack("<HH", head[:4])
        if group != 0x0002:
            file.seek(start)
            return syntax
        vr = head[4:6]
        if vr in _LONG_VRS:
            extra = file.read(4)
            if len(extra) < 4:
                return None
            (length,) = struct.unpack("<I", extra)
        else:
            (length,) = struct.unpack("<H", head[6:8])
        if length == _UNDEFINED or file.tell() + length > size:
            return None
        value = file.read(length)
        if head[:4] == b"\x02\x00\x10\x00":
            syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")


def _walk(walk: _Walk) -> None:
    reader = walk.reader
    order = "<" if walk.little else ">"
    while True:
        while (
            walk.stack and walk.stack[-1].end is not None and reader.position >= walk.stack[-1].end
        ):
            walk.stack.pop()
        implicit = walk.stack[-1].implicit if walk.stack else walk.implicit
        head = reader.read(4)
        if not head:
            return  # the end of the data set (an unclosed undefined length is pydicom's call)
        if len(head) < 4:
            raise OverLimit(CANNOT_UNDERSTAND, "truncated: data set ends inside a tag")
        group, element = struct.unpack(order + "HH", head)
        tag = (group << 16) | element
        if group == 0xFFFE:
            length = _read_length(reader, order, 4)
            _delimiter(walk, tag, length)
            continue
        vr, length = _vr_and_length(reader, order, implicit, tag)
        if tag == _PIXEL_DATA and not walk.stack:
            _check_pixel_encoding(walk, length)
        if vr == b"SQ" or (length == _UNDEFINED and vr == b"UN"):
            _push(walk, _Open(_end(reader, length), "sequence", implicit or vr == b"UN"))
        elif length == _UNDEFINED:
            # Encapsulated pixel data (PS3.5 A.4), or an OB/OW of undefined length: fragments.
            walk.stack.append(_Open(None, "fragments", implicit))
        else:
            _check_length(reader, tag, length)
            if not walk.stack and tag in _SIZING and length <= 16:
                walk.sizing[tag] = _number(reader.read(length), vr, order)
            else:
                reader.skip(length)


def _delimiter(walk: _Walk, tag: int, length: int) -> None:
    reader = walk.reader
    top = walk.stack[-1] if walk.stack else None
    if tag == _ITEM:
        if top is not None and top.kind == "fragments":
            _check_length(reader, tag, length)
            reader.skip(length)
        elif top is not None and top.kind == "sequence":
            walk.stack.append(_Open(_end(reader, length), "item", top.implicit))
        else:
            raise OverLimit(CANNOT_UNDERSTAND, "item tag (FFFE,E000) outside a sequence")
    elif tag == _ITEM_END:
        # A stray delimiter costs nothing; it is pydicom's to accept or refuse, not a limit's.
        if top is not None and top.kind == "item":
            walk.stack.pop()
    elif tag == _SEQUENCE_END:
        if top is not None and top.kind != "item":
            walk.stack.pop()
    else:
        raise OverLimit(CANNOT_UNDERSTAND, f"unknown delimiter tag (FFFE,{tag & 0xFFFF:04X})")


def _push(walk: _Walk, opened: _Open) -> None:
    walk.stack.append(opened)
    depth = sum(1 for o in walk.stack if o.kind == "sequence")
    if depth > walk.limits.max_sequence_depth:
        raise OverLimit(
            CANNOT_UNDERSTAND,
            f"sequences nested deeper than {walk.limits.max_sequence_depth} levels",
        )


def _read_length(reader: _Reader, order: str, size: int) -> int:
    raw = reader.read(size)
    if len(raw) < size:
        raise OverLimit(CANNOT_UNDERSTAND, "truncated: data set ends inside an element header")
    return int(struct.unpack(order + ("I" if size == 4 else "H"), raw)[0])


def _vr_and_length(reader: _Reader, order: str, implicit: bool, tag: int) -> tuple[bytes, int]:
    if implicit:
        length = _read_length(reader, order, 4)
        return _implicit_vr(tag, length), length
    vr = reader.read(2)
    if len(vr) < 2:
        raise OverLimit(CANNOT_UNDERSTAND, "truncated: data set ends inside an element header")
    if vr not in _VRS:
        # Not a VR: an implicit VR element where the syntax says explicit VR (a whole implicit
        # VR body sent in an explicit VR context, or an encoder's bug). pydicom guesses its way
        # through; DCMTK's dcmdump and WADO rendering fail on the archived file, so it is
        # refused here (PS3.5 7.1.2: every element of an explicit VR data set has its VR).
        raise EncodingMismatch(
            f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has no explicit VR "
            f"({vr!r} is none), though the transfer syntax is explicit VR"
        )
    if vr in _LONG_VRS:
        reader.read(2)
        return vr, _read_length(reader, order, 4)
    return vr, _read_length(reader, order, 2)


def _check_pixel_encoding(walk: _Walk, length: int) -> None:
    """Top-level Pixel Data: encapsulated (undefined length, fragments) exactly when the
    transfer syntax is an encapsulated one (PS3.5 A.4, 8.2)."""
    if walk.encapsulated is None:
        return
    if walk.encapsulated and length != _UNDEFINED:
        raise EncodingMismatch(
            "native Pixel Data (defined length) in an encapsulated (compressed) transfer syntax"
        )
    if not walk.encapsulated and length == _UNDEFINED:
        raise EncodingMismatch("encapsulated Pixel Data in a native transfer syntax")


def _implicit_vr(tag: int, length: int) -> bytes:
    """The VR an implicit VR element has: the dictionary's, SQ for other undefined lengths."""
    try:
        vr = dictionary_VR(tag).encode("ascii")[:2]
    except KeyError:
        vr = b"UN"
    if length == _UNDEFINED and vr not in (b"SQ", b"OB", b"OW") and tag != _PIXEL_DATA:
        vr = b"SQ"  # PS3.5 7.5.1: undefined length in implicit VR is a sequence
    return vr


def _end(reader: _Reader, length: int) -> int | None:
    if length == _UNDEFINED:
        return None
    _check_length(reader, 0, length)
    return reader.position + length


def _check_length(reader: _Reader, tag: int, length: int) -> None:
    remaining = reader.remaining()
    if remaining is not None and length > remaining:
        raise OverLimit(
            CANNOT_UNDERSTAND,
            f"truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes, "
            f"{remaining} remain",
        )


def _number(value: bytes, vr: bytes, order: str) -> int:
    """US/UL/SS (binary) or IS (text) as an int; 0 when unreadable."""
    try:
        if vr in (b"IS", b"DS"):
            return int(float(value.rstrip(b"\x00 ").decode("ascii") or "0"))
        if len(value) == 2:
            return int(struct.unpack(order + "H", value)[0])
        if len(value) == 4:
            return int(struct.unpack(order + "I", value)[0])
    except (ValueError, UnicodeDecodeError, struct.error):
        return 0
    return 0


def _check_pixels(sizing: dict[int, int], limits: Limits) -> None:
    rows, columns = sizing.get(_ROWS, 0), sizing.get(_COLUMNS, 0)
    samples = max(sizing.get(_SAMPLES, 1), 1)
    bits = max(sizing.get(_BITS, 8), 1)
    frames = max(sizing.get(_FRAMES, 1), 1)
    decoded = rows * columns * samples * frames * ((bits + 7) // 8)
    if decoded > limits.max_pixel_bytes:
        raise OverLimit(
            OUT_OF_RESOURCES,
            f"pixel data would decode to {decoded} bytes ({rows}x{columns}x{samples} samples, "
            f"{bits} bits, {frames} frames), above the {limits.max_pixel_bytes} byte limit",
        )

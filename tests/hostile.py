"""Hostile DICOM inputs for the limit tests and ``bench/fuzz.py``: each a complete Part 10 file
(preamble, ``DICM``, file meta, data set) built byte by byte, so nothing repairs it on the way.

The encodings follow PS3.5 7.1 (elements), 7.5 (sequences, items, delimiters) and A.4
(encapsulated pixel data); each maker says which limit or check it is meant to trip.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.dicom_factory import DX_FOR_PRESENTATION, make_cxr, new_uid

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
UNDEFINED = 0xFFFFFFFF


def element(group: int, elem: int, vr: bytes, value: bytes, *, implicit: bool = False) -> bytes:
    """One data element, its value padded to even length (PS3.5 7.1.2/7.1.3)."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB", b"UN") else b" "
    if implicit:
        return struct.pack("<HHI", group, elem, len(value)) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL"):
        return (
            struct.pack("<HH", group, elem) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        )
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def file_meta(sop_uid: str, syntax: str, sop_class: str = DX_FOR_PRESENTATION) -> bytes:
    body = element(0x0002, 0x0001, b"OB", b"\x00\x01")
    body += element(0x0002, 0x0002, b"UI", sop_class.encode())
    body += element(0x0002, 0x0003, b"UI", sop_uid.encode())
    body += element(0x0002, 0x0010, b"UI", syntax.encode())
    body += element(0x0002, 0x0012, b"UI", b"1.2.826.0.1.3680043.10.1077.1")
    group = element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return group + body


def part10(body: bytes, sop_uid: str, syntax: str = EXPLICIT, preamble: bytes = b"") -> bytes:
    return preamble.ljust(128, b"\0")[:128] + b"DICM" + file_meta(sop_uid, syntax) + body


def identifiers(
    sop_uid: str, *, implicit: bool = False, study: str = "", series: str = ""
) -> bytes:
    """The Type 1 identifiers the archive needs, in tag order (group 0008 .. 0020)."""
    parts = [
        element(0x0008, 0x0016, b"UI", DX_FOR_PRESENTATION.encode(), implicit=implicit),
        element(0x0008, 0x0018, b"UI", sop_uid.encode(), implicit=implicit),
        element(0x0008, 0x0060, b"CS", b"DX", implicit=implicit),
        element(0x0010, 0x0020, b"LO", b"FUZZ01", implicit=implicit),
        element(0x0020, 0x000D, b"UI", (study or new_uid()).encode(), implicit=implicit),
        element(0x0020, 0x000E, b"UI", (series or new_uid()).encode(), implicit=implicit),
    ]
    return b"".join(parts)


def _item(body: bytes) -> bytes:
    return (
        struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
        + body
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    )


def _sequence(body: bytes, *, implicit: bool, vr: bytes = b"SQ") -> bytes:
    # (0040,A730) Content Sequence: an SQ in the dictionary, so implicit VR readers know it too.
    head = struct.pack("<HH", 0x0040, 0xA730)
    if not implicit:
        head += vr + b"\0\0"
    return (
        head + struct.pack("<I", UNDEFINED) + _item(body) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )


def deep_sequences(depth: int, *, implicit: bool = False, vr: bytes = b"SQ") -> bytes:
    """Sequences nested ``depth`` deep, undefined lengths all the way (the recursion bomb)."""
    sop = new_uid()
    body = b""
    # Inside a UN of undefined length everything is implicit VR LE (PS3.5 6.2.2).
    inner_implicit = implicit or vr == b"UN"
    for _ in range(depth - 1):
        body = _sequence(body, implicit=inner_implicit)
    body = _sequence(body, implicit=implicit, vr=vr)
    return part10(
        identifiers(sop, implicit=implicit) + body, sop, IMPLICIT if implicit else EXPLICIT
    )


def pixel_bomb(
    rows: int = 65535, cols: int = 65535, frames: int = 1000, syntax: str = RLE
) -> bytes:
    """Compressed pixel data a few bytes long whose header says it decodes to terabytes."""
    sop = new_uid()
    body = identifiers(sop)
    body += element(0x0028, 0x0002, b"US", struct.pack("<H", 1))
    body += element(0x0028, 0x0004, b"CS", b"MONOCHROME2")
    body += element(0x0028, 0x0008, b"IS", str(frames).encode())
    body += element(0x0028, 0x0010, b"US", struct.pack("<H", rows))
    body += element(0x0028, 0x0011, b"US", struct.pack("<H", cols))
    body += element(0x0028, 0x0100, b"US", struct.pack("<H", 16))
    body += element(0x0028, 0x0101, b"US", struct.pack("<H", 12))
    body += element(0x0028, 0x0102, b"US", struct.pack("<H", 11))
    body += element(0x0028, 0x0103, b"US", struct.pack("<H", 0))
    fragment = b"\x01\x00\x00\x00" + b"\x40\x00\x00\x00" + b"\0" * 56 + b"\x81\x00" * 8
    body += struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", UNDEFINED)
    body += struct.pack("<HHI", 0xFFFE, 0xE000, 0)  # empty Basic Offset Table
    body += struct.pack("<HHI", 0xFFFE, 0xE000, len(fragment)) + fragment
    body += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return part10(body, sop, syntax)


def lying_length(declared: int = 0xFFFFFFF0) -> bytes:
    """Valid identifiers, then an OB element declaring ``declared`` bytes and holding 16."""
    sop = new_uid()
    body = identifiers(sop)
    body += struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", declared)
    return part10(body + b"\0" * 16, sop)


def deflate_bomb(inflated_mb: int = 64) -> bytes:
    """Deflated explicit VR LE (PS3.5 A.5) whose few kilobytes inflate to ``inflated_mb``."""
    sop = new_uid()
    size = inflated_mb * 1024 * 1024
    plain = (
        identifiers(sop) + struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", size)
    )
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [packer.compress(plain)]
    zeros = b"\0" * (1 << 20)
    chunks += [packer.compress(zeros) for _ in range(inflated_mb)]
    chunks.append(packer.flush())
    return part10(b"".join(chunks), sop, DEFLATED)


def with_uids(study: str, series: str, sop: str) -> bytes:
    """A readable data set whose UIDs are chosen by the caller (``..``, ``/``, ``\\``...)."""
    return part10(identifiers(sop, study=study, series=series), sop if sop.isascii() else "1.2")


def valid(rows: int = 64, cols: int = 64, *, study: str = "", seed: int = 0) -> bytes:
    """A real, small DX image (tests.dicom_factory) as Part 10 bytes."""
    ds = make_cxr(None, rows=rows, cols=cols, study_uid=study or None, seed=seed)
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


TRAVERSAL_UIDS = [
    "../../../../tmp/raddraft-escape",
    "..",
    "1.2/../../x",
    "1.2\\..\\..\\x",
    "/etc/passwd",
    "1.2.3\x00/../x",
    ".hidden",
    "a" * 300,
    "1.2.3/",
    "~root",
]

POLYGLOT_PREAMBLES = [
    b"MZ\x90\x00" + b"\0" * 56 + b"This program cannot be run in DOS mode",
    b"<html><script>alert(document.domain)</script></html>",
    b"#!/bin/sh\nrm -rf /\n",
    b"PK\x03\x04" + b"\x14\x00" * 10,
    b"%PDF-1.7\n",
    b"II*\x00\x08\x00\x00\x00",  # TIFF, which PS3.10 7.5 itself allows for dual-format files
]


def mutations(seed: int, base: bytes, count: int) -> Iterator[bytes]:
    """``count`` byte-level mutations of ``base`` (flips, truncations, length rewrites, splices)."""
    rng = random.Random(seed)
    operations: list[Callable[[bytearray], bytearray]] = [
        lambda b: b[: rng.randrange(132, max(133, len(b)))],
        lambda b: _flip(b, rng, rng.randrange(1, 16)),
        lambda b: _rewrite_length(b, rng),
        lambda b: b[:132] + bytearray(rng.randbytes(rng.randrange(1, 4096))),
        lambda b: _splice(b, rng),
    ]
    for _ in range(count):
        yield bytes(rng.choice(operations)(bytearray(base)))


def _flip(data: bytearray, rng: random.Random, times: int) -> bytearray:
    for _ in range(times):
        data[rng.randrange(132, len(data))] = rng.randrange(256)
    return data


def _rewrite_length(data: bytearray, rng: random.Random) -> bytearray:
    at = rng.randrange(132, len(data) - 4)
    value = rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 32)])
    data[at : at + 4] = struct.pack("<I", value)
    return data


def _splice(data: bytearray, rng: random.Random) -> bytearray:
    at = rng.randrange(132, len(data))
    return data[:at] + data[rng.randrange(132, len(data)) :]


def send_part10(port: int, data: bytes, folder: Path, *, aet: str = "MODALITY") -> int | None:
    """C-STORE ``data`` after its file meta exactly as it is (pynetdicom's chunked send reads
    only the file meta); the status, or None when the association failed or was aborted."""
    ae = AE(ae_title=aet)
    for syntax in (EXPLICIT, IMPLICIT, DEFLATED, JPEG_BASELINE, RLE):
        ae.add_requested_context(DX_FOR_PRESENTATION, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    path = folder / f"send-{new_uid()}.dcm"
    path.write_bytes(data)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="RADDRAFT")
        if not assoc.is_established:
            return None
        try:
            status = assoc.send_c_store(path)
        except Exception:  # a file meta pynetdicom itself cannot read: nothing was sent
            assoc.abort()
            return None
        if assoc.is_established:
            assoc.release()
        return int(status.Status) if status and "Status" in status else None
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        path.unlink(missing_ok=True)


def echo(port: int, *, aet: str = "ECHOSCU") -> bool:
    """C-ECHO (PS3.4 A.4) with pynetdicom: is the listener still serving?"""
    ae = AE(ae_title=aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="RADDRAFT")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


# -- the upper layer (PS3.8 9.3): PDUs by hand, so their lengths can lie ----------------------

VERIFICATION = "1.2.840.10008.1.1"


def _ul_item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(
    called: str = "RADDRAFT",
    calling: str = "FUZZER",
    abstract: str = VERIFICATION,
    syntaxes: tuple[str, ...] = (IMPLICIT,),
    max_pdu: int = 16384,
) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) with one presentation context, ID 1."""
    context = b"\x01\0\0\0" + _ul_item(0x30, abstract.encode())
    context += b"".join(_ul_item(0x40, s.encode()) for s in syntaxes)
    items = _ul_item(0x10, b"1.2.840.10008.3.1.1.1") + _ul_item(0x20, context)
    items += _ul_item(0x50, _ul_item(0x51, struct.pack(">I", max_pdu)))
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16)
    body += b"\0" * 32 + items
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def p_data(
    fragment: bytes, *, context_id: int = 1, header: int = 0x03, pdv_length: int | None = None
) -> bytes:
    """P-DATA-TF (PS3.8 9.3.5) with one PDV; ``header`` 0x03 = last fragment of a command."""
    length = len(fragment) + 2 if pdv_length is None else pdv_length
    pdv = struct.pack(">IBB", length, context_id, header) + fragment
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """A DIMSE command set (PS3.7 E.1), implicit VR LE, with its group length first."""
    body = b"".join(struct.pack("<HHI", 0x0000, e, len(v)) + v for e, v in elements)
    return struct.pack("<HHI", 0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body


def c_echo_rq(message_id: int = 1) -> bytes:
    return command_set(
        [
            (0x0002, VERIFICATION.encode() + b"\0"),
            (0x0100, struct.pack("<H", 0x0030)),
            (0x0110, struct.pack("<H", message_id)),
            (0x0800, struct.pack("<H", 0x0101)),
        ]
    )

"""The STOW-RS and HL7 order entry points for bench/fuzz.py: hostile inputs over the network
against a running ``raddraft web`` and a running ``raddraft orders``.

Each input says what a clear answer to it is (an HTTP 4xx for a malformed STOW-RS request, an
ACK with MSA-1 AE or AR for a malformed order message; mutations and oversized-but-legal fields
may be taken). After every input a valid request checks the entry point still serves: a small
instance POSTed to ``/dicomweb/studies`` must be answered 200, an ORM^O01 must get AA. At the
end every acknowledged valid instance must be in the database and the archive, and every ACK
sent for an order message (any code but "not stored, send again") must have its raw message in
``order_messages``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from urllib.parse import quote

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from sqlalchemy import create_engine, func, select

from dicom_listener.tables import Instance
from orders.tables import OrderMessage
from raddraft.db import session_scope
from report_drafts.tables import Role
from report_drafts.users import add_user
from tests import hostile
from tests.conftest import free_port
from tests.dicom_factory import make_cxr, new_uid
from tests.listener_process import port_open

START, END = b"\x0b", b"\x1c\x0d"
CLIENT_ERROR = frozenset(range(400, 500))


@dataclass
class Figures:
    """What one target's run showed; the RESULT line adds these up."""

    target: str
    inputs: int = 0
    serving: int = 0
    peak_rss_mb: float = 0.0
    stray_files: int = 0
    lost: int = 0
    unanswered: list[str] = field(default_factory=list)  # inputs without a clear answer
    families: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    healthz_worst_ms: float | None = None  # only targets that poll /healthz while fuzzed


def _status_mb(pid: int, name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """The kernel's VmHWM of the process (uvicorn serves in the process itself)."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS")


class Child:
    """``python -m raddraft <argv>`` in its own session, ready when its port accepts."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, port: int) -> None:
        self.port = port
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "raddraft", *argv],
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        self.log = log
        deadline = time.monotonic() + 60
        while not port_open(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- STOW-RS ---------------------------------------------------------------------------------

#: A STOW-RS input: (method path, headers, body or chunks); the answer's status is checked.
StowInput = tuple[str, dict[str, str], bytes | list[bytes]]
STOW_LIMIT_MB = 8


def related(parts: list[tuple[str, bytes]], boundary: str = "fuzzBOUNDARY") -> bytes:
    body = b""
    for content_type, data in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def dicom_type(boundary: str = "fuzzBOUNDARY") -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow_inputs(rng: random.Random, count: int) -> list[tuple[str, StowInput]]:  # noqa: C901 (one flat list of input families, read top to bottom)
    """Hostile STOW-RS requests; every one must be answered 4xx."""
    path = "/dicomweb/studies"
    valid = hostile.valid(32, 32)
    cases: list[tuple[str, StowInput]] = [
        (
            "stow:lying-boundary",
            (path, {"content-type": dicom_type("other")}, related([("application/dicom", valid)])),
        ),
        (
            "stow:no-boundary",
            (
                path,
                {"content-type": 'multipart/related; type="application/dicom"'},
                related([("application/dicom", valid)]),
            ),
        ),
        (
            "stow:long-boundary",
            (
                path,
                {"content-type": dicom_type("b" * 500)},
                related([("application/dicom", valid)], "b" * 500),
            ),
        ),
        ("stow:not-multipart", (path, {"content-type": "application/dicom"}, valid)),
        (
            "stow:wrong-root-type",
            (
                path,
                {
                    "content-type": 'multipart/related; type="application/json"; '
                    "boundary=fuzzBOUNDARY"
                },
                related([("application/json", b"{}")]),
            ),
        ),
        ("stow:empty-body", (path, {"content-type": dicom_type()}, b"")),
        (
            "stow:no-close-delimiter",
            (path, {"content-type": dicom_type()}, related([("application/dicom", valid)])[:-20]),
        ),
        (
            "stow:no-blank-line",
            (
                path,
                {"content-type": dicom_type()},
                b"--fuzzBOUNDARY\r\nContent-Type: application/dicom" + valid,
            ),
        ),
        (
            "stow:declared-10GB",
            (path, {"content-type": dicom_type(), "content-length": str(10 << 30)}, b""),
        ),
        (
            "stow:chunked-over-limit",
            (path, {"content-type": dicom_type()}, [b"\0" * (1 << 20)] * (STOW_LIMIT_MB + 2)),
        ),
        (
            "stow:body-over-limit",
            (
                path,
                {"content-type": dicom_type()},
                related([("application/dicom", b"\0" * ((STOW_LIMIT_MB + 1) << 20))]),
            ),
        ),
        (
            "stow:part-declares-huge-length",
            (
                path,
                {"content-type": dicom_type()},
                b"--fuzzBOUNDARY\r\nContent-Type: application/dicom\r\n"
                b"Content-Length: 99999999999999\r\n\r\n"
                + b"\0" * 256
                + b"\r\n--fuzzBOUNDARY--\r\n",
            ),
        ),
        (
            "stow:traversal-in-url",
            (
                "/dicomweb/studies/..%2F..%2F..%2Ftmp%2Fraddraft-escape",
                {"content-type": dicom_type()},
                related([("application/dicom", valid)]),
            ),
        ),
        (
            "stow:deflate-bomb",
            (
                path,
                {"content-type": dicom_type()},
                related([("application/dicom", hostile.deflate_bomb(64))]),
            ),
        ),
        (
            "stow:gzip-body",
            (
                path,
                {"content-type": dicom_type(), "content-encoding": "gzip"},
                zlib.compress(b"\0" * (64 << 20)),
            ),
        ),
    ]
    for payload in (
        b'{"resourceType": "Patient"}',
        b"\x89PNG\r\n\x1a\n" + os.urandom(64),
        b"MSH|^~\\&|",
        b"",
    ):
        for kind in ("application/dicom", "application/octet-stream", "image/png"):
            cases.append(
                (
                    "stow:not-dicom-part",
                    (path, {"content-type": dicom_type()}, related([(kind, payload)])),
                )
            )
    for uid in hostile.TRAVERSAL_UIDS:
        for ids in (
            (uid, new_uid(), new_uid()),
            (new_uid(), uid, new_uid()),
            (new_uid(), new_uid(), uid),
        ):
            cases.append(
                (
                    "stow:traversal-uid",
                    (
                        path,
                        {"content-type": dicom_type()},
                        related([("application/dicom", hostile.with_uids(*ids))]),
                    ),
                )
            )
    for depth in (100, 5000):
        cases.append(
            (
                "stow:deep-sequences",
                (
                    path,
                    {"content-type": dicom_type()},
                    related([("application/dicom", hostile.deep_sequences(depth))]),
                ),
            )
        )
    for rows, cols, frames in ((65535, 65535, 1000), (30000, 30000, 2)):
        bomb = hostile.pixel_bomb(rows, cols, frames, hostile.RLE)
        cases.append(
            (
                "stow:pixel-bomb",
                (path, {"content-type": dicom_type()}, related([("application/dicom", bomb)])),
            )
        )
    for declared in (0xFFFFFFF0, 1 << 30):
        cases.append(
            (
                "stow:lying-element-length",
                (
                    path,
                    {"content-type": dicom_type()},
                    related([("application/dicom", hostile.lying_length(declared))]),
                ),
            )
        )
    while len(cases) < count:
        variant = rng.randrange(3)
        if variant == 0:  # random bytes as the whole body
            cases.append(
                (
                    "stow:random-body",
                    (path, {"content-type": dicom_type()}, rng.randbytes(rng.randrange(0, 8192))),
                )
            )
        elif variant == 1:  # a well-framed body whose part is a mutated instance
            data = next(hostile.mutations(rng.randrange(1 << 30), valid, 1))
            cases.append(
                (
                    "stow:mutated-part",
                    (path, {"content-type": dicom_type()}, related([("application/dicom", data)])),
                )
            )
        else:  # a valid body with bytes of its framing mutated
            body = bytearray(related([("application/dicom", b"not dicom " * 8)]))
            for _ in range(rng.randrange(1, 6)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            cases.append(
                ("stow:mutated-framing", (path, {"content-type": dicom_type()}, bytes(body)))
            )
    return cases[:count]


def _post(port: int, token: str, request: StowInput) -> int | str:
    """The HTTP status of one POST, or the name of the error that stopped it."""
    path, headers, body = request
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"authorization": f"Bearer {token}", **headers}
        if isinstance(body, list):
            connection.putrequest("POST", path)
            for name, value in {**headers, "transfer-encoding": "chunked"}.items():
                connection.putheader(name, value)
            connection.endheaders()
            for chunk in body:
                connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            connection.send(b"0\r\n\r\n")
        elif "content-length" in headers:  # a declared length that lies: send the headers only
            connection.putrequest("POST", path)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            connection.send(body)
        else:
            connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError as error:  # the server closing on a refused body can beat our last send
        return error.__class__.__name__
    finally:
        connection.close()


def _valid_post(port: int, token: str, seed: int) -> tuple[int | str, str]:
    data = hostile.valid(32, 32, seed=seed)
    sop = str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    return _post(
        port,
        token,
        (
            "/dicomweb/studies",
            {"content-type": dicom_type()},
            related([("application/dicom", data)]),
        ),
    ), sop


def run_stow(
    work: Path, seed: int, count: int, strays: Callable[[Path, Path], list[Path]]
) -> Figures:
    """Fuzz a running ``raddraft web``; ``strays`` is bench/fuzz.py's file check."""
    from raddraft import migrate

    data = work / "stow-data"
    data.mkdir()
    url = f"sqlite:///{data / 'raddraft.db'}"
    migrate.upgrade(url)
    engine = create_engine(url)
    with session_scope(engine) as session:
        _user, token = add_user(session, "fuzz-gateway", Role.sender, display_name="fuzz^gateway")
    port = free_port()
    env = {
        "RADDRAFT_DATA_DIR": str(data),
        "RADDRAFT_DATABASE_URL": url,
        "RADDRAFT_DICOMWEB_MAX_REQUEST_MB": str(STOW_LIMIT_MB),
        "RADDRAFT_WEB_SECRET": uuid.uuid4().hex,  # else a key file in the data dir
        "RADDRAFT_MAX_DATASET_MB": "16",
        "RADDRAFT_LOG_LEVEL": "WARNING",
    }
    web = Child(["web", "--host", "127.0.0.1", "--port", str(port)], env, work / "web.log", port)
    figures = Figures("stow")
    figures.notes.append(f"RSS after start (baseline) {rss_mb(web.process.pid):.0f} MB")
    acked: list[str] = []
    statuses: Counter[str] = Counter()
    try:
        for number, (name, request) in enumerate(stow_inputs(random.Random(seed), count), 1):
            figures.inputs += 1
            figures.families[name] += 1
            status = _post(port, token, request)
            statuses[str(status)] += 1
            # A mutated instance may still be a valid one; a refused oversized body may reset
            # the connection under our last send before its 413 is read.
            benign = (name == "stow:mutated-part" and status == 200) or (
                isinstance(status, str) and "over-limit" in name
            )
            if status not in CLIENT_ERROR and not benign:
                figures.unanswered.append(f"{name}->{status}")
            answer, sop = _valid_post(port, token, number)
            if answer == 200:
                figures.serving += 1
                acked.append(sop)
            elif not web.alive():
                figures.notes.append(f"web died after input {number} ({name})")
                break
        figures.peak_rss_mb = peak_rss_mb(web.process.pid) if web.alive() else float("nan")
    finally:
        web.stop()
    with engine.connect() as connection:
        rows = dict(connection.execute(select(Instance.sop_instance_uid, Instance.path)).all())
    figures.lost = sum(
        1 for uid in acked if uid not in rows or not (data / "archive" / rows[uid]).is_file()
    )
    found = strays(work / "stow-data", data)
    figures.stray_files = len(found)
    if found:
        figures.notes.append(f"stray: {[str(p) for p in found[:5]]}")
    figures.notes.append(f"answers: {dict(statuses)}; valid POSTs stored: {len(acked)}")
    return figures


# -- HL7 v2 orders over MLLP -----------------------------------------------------------------

ORDERS_LIMIT_KB = 1024


@dataclass(frozen=True)
class OrderInput:
    """Bytes to send on a fresh connection and the MSA-1 codes that are a clear answer to it
    (empty: no answer is possible, e.g. junk with no start block; the valid ORM then sent on the
    same connection must still get AA)."""

    data: bytes
    codes: frozenset[str]
    half_close: bool = False  # end our side after sending (a frame without its end block)
    #: Hold this many unfinished frames open from another loopback address (127.0.0.2) while
    #: the valid ORM from 127.0.0.1 is sent: stalled senders must not lock the RIS out.
    stall: int = 0


def orm(control: str, accession: str = "", facility: str = "GENHOSP", **fields: str) -> str:
    accession = accession or f"ACC{control}"
    segments = [
        f"MSH|^~\\&|RIS|{facility}|RADDRAFT|RAD|20261202101500||ORM^O01^ORM_O01|{control}|P|2.5.1",
        f"PID|1||{fields.get('pid3', 'P0001^^^HOSP^MR')}||{fields.get('pid5', 'Doe^Jane')}",
        "ORC|NW|PL77|FL77||||^^^^^R||||||1234^Smith^John",
        f"OBR|1|PL77|FL77|CXR^Chest XR||||||||||||1234^Smith^John||{accession}"
        f"|||||||||^^^^^R||||^{fields.get('reason', 'Cough')}",
    ]
    return "\r".join(segments)


BAD = frozenset({"AE", "AR"})
ANY = frozenset({"AA", "AE", "AR"})


def order_inputs(rng: random.Random, count: int) -> Iterator[tuple[str, OrderInput]]:
    def framed(text: str | bytes) -> bytes:
        return START + (text.encode() if isinstance(text, str) else text) + END

    fixed: list[tuple[str, OrderInput]] = [
        ("orders:no-end-block", OrderInput(START + orm("NOEND").encode(), BAD, half_close=True)),
        (
            "orders:oversized-frame",
            OrderInput(START + b"MSH|^~\\&|" + b"A" * ((ORDERS_LIMIT_KB + 64) << 10), BAD),
        ),
        (
            "orders:oversized-field",
            OrderInput(framed(orm("BIGF", reason="x" * ((ORDERS_LIMIT_KB + 1) << 10))), BAD),
        ),
        ("orders:empty-frame", OrderInput(framed(b""), BAD)),
        ("orders:no-msh", OrderInput(framed("PID|1||P1"), BAD)),
        (
            "orders:msh-only",
            OrderInput(framed("MSH|^~\\&|RIS|GENHOSP|RADDRAFT|RAD|2026||ORM^O01|MO1|P|2.5.1"), BAD),
        ),
        (
            "orders:no-encoding-chars",
            OrderInput(framed(orm("ENC1").replace("MSH|^~\\&|", "MSH||", 1)), BAD),
        ),
        (
            "orders:separator-is-component",
            OrderInput(framed(orm("ENC2").replace("MSH|^~\\&|", "MSH^^~\\&^", 1)), BAD),
        ),
        (
            "orders:repeated-encoding-chars",
            OrderInput(framed(orm("ENC3").replace("MSH|^~\\&|", "MSH|^^^^|", 1)), ANY),
        ),
        (
            "orders:unknown-version",
            OrderInput(framed(orm("VER1").replace("|P|2.5.1", "|P|9.9")), BAD),
        ),
        (
            "orders:not-an-order",
            OrderInput(framed(orm("ADT1").replace("ORM^O01^ORM_O01", "ADT^A01^ADT_A01")), BAD),
        ),
        ("orders:facility-not-allowed", OrderInput(framed(orm("FAC1", facility="EVIL")), BAD)),
        ("orders:no-pid3", OrderInput(framed(orm("PID1", pid3="")), BAD)),
        ("orders:newline-separated", OrderInput(framed(orm("NL1").replace("\r", "\n")), ANY)),
        (
            "orders:latin-1",
            OrderInput(framed(orm("LAT1", pid5="Müller^Jürgen").encode("latin-1")), ANY),
        ),
        (
            "orders:nul-bytes",
            OrderInput(framed(orm("NUL1").encode().replace(b"Cough", b"Co\0ugh")), ANY),
        ),
        ("orders:huge-name", OrderInput(framed(orm("HUGE1", pid5="D" * (256 << 10))), ANY)),
        ("orders:huge-indication", OrderInput(framed(orm("HUGE2", reason="r" * (512 << 10))), ANY)),
        ("orders:many-segments", OrderInput(framed(orm("SEG1") + "\rNTE|1||x" * 20000), ANY)),
        (
            "orders:junk-outside-frames",
            OrderInput(os.urandom(4096).replace(START, b""), frozenset()),
        ),
        # Issue 20: one frame, one message; bytes outside frames; stalled connections.
        (
            "orders:two-in-one-frame",
            OrderInput(framed(orm("TWO1") + "\r" + orm("TWO2")), frozenset({"AR"})),
        ),
        (
            "orders:junk-before-start",
            OrderInput(b"junk before the start block" + framed(orm("JUNK1")), frozenset({"AA"})),
        ),
        (
            "orders:start-inside-frame",
            OrderInput(START + orm("CUTA").encode() + framed(orm("CUTB")), frozenset({"AR"})),
        ),
        ("orders:no-start-block", OrderInput(orm("NOSTART").encode() + END, frozenset())),
        ("orders:stalled-connections", OrderInput(b"", frozenset(), stall=12)),
    ]
    yield from fixed[:count]
    for number in range(len(fixed), count):
        kind = rng.randrange(4)
        if kind == 0:
            yield (
                "orders:binary-junk",
                OrderInput(framed(rng.randbytes(rng.randrange(1, 4096)).replace(END, b"")), BAD),
            )
        elif kind == 1:
            message = bytearray(orm(f"MUT{number}").encode())
            for _ in range(rng.randrange(1, 8)):
                message[rng.randrange(len(message))] = rng.randrange(256)
            yield "orders:mutated", OrderInput(framed(bytes(message).replace(END, b"")), ANY)
        elif kind == 2:
            segments = orm(f"SEGM{number}").split("\r")
            rng.shuffle(segments)
            yield "orders:shuffled-segments", OrderInput(framed("\r".join(segments)), ANY)
        else:
            text = orm(f"FLD{number}")
            at = rng.randrange(len(text))
            junk = rng.choice(
                ["|" * 500, "^" * 500, "~" * 500, "\\" * 500, "&" * 500, "\\X00\\" * 50]
            )
            yield "orders:separator-flood", OrderInput(framed(text[:at] + junk + text[at:]), ANY)


def _read_ack(sock: socket.socket) -> str | None:
    buffer = b""
    while END not in buffer:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        buffer += chunk
    return buffer[buffer.index(START) + 1 : buffer.index(END)].decode("utf-8", errors="replace")


def _code(ack: str | None) -> str:
    if ack is None:
        return "none"
    for segment in ack.split("\r"):
        if segment.startswith("MSA|"):
            return segment.split("|")[1]
    return "no MSA"


def _stalled(port: int, count: int) -> list[socket.socket]:
    """``count`` connections from 127.0.0.2, each an unfinished frame; those refused at accept
    (the per-address cap) are simply not held."""
    held = []
    for _ in range(count):
        try:
            sock = socket.create_connection(
                ("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)
            )
            sock.sendall(START + b"MSH|^~\\&|RIS|GENHOSP|")
        except OSError:
            continue
        held.append(sock)
    return held


def _send_order(port: int, item: OrderInput, valid_control: str) -> tuple[str, str]:
    """(MSA-1 of the answer to the input, MSA-1 of the valid ORM sent after it)."""
    if item.stall:
        held = _stalled(port, item.stall)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(START + orm(valid_control).encode() + END)
                return "", _code(_read_ack(sock))
        finally:
            for sock in held:
                sock.close()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # The listener may close on an oversized frame before all is sent: its AR is read.
        with contextlib.suppress(OSError):
            sock.sendall(item.data)
        if item.half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = _code(_read_ack(sock)) if item.codes else ""
        if item.codes:
            after = None
        else:
            sock.sendall(START + orm(valid_control).encode() + END)
            after = _code(_read_ack(sock))
    if after is None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(START + orm(valid_control).encode() + END)
            after = _code(_read_ack(sock))
    return answer, after


def run_orders(work: Path, seed: int, count: int) -> Figures:
    """Fuzz a running ``raddraft orders``."""
    from raddraft import migrate

    data = work / "orders-data"
    data.mkdir()
    url = f"sqlite:///{data / 'raddraft.db'}"
    migrate.upgrade(url)
    port = free_port()
    env = {
        "RADDRAFT_DATA_DIR": str(data),
        "RADDRAFT_DATABASE_URL": url,
        "RADDRAFT_ORDERS_ALLOWED_FACILITIES": "GENHOSP",
        "RADDRAFT_ORDERS_MAX_MESSAGE_KB": str(ORDERS_LIMIT_KB),
        # The fuzzer's own connections come one after another from 127.0.0.1; on a loaded
        # machine a refused one's handler may still be draining when the next arrives. The
        # stalled ones (12, from 127.0.0.2) still meet the cap.
        "RADDRAFT_ORDERS_MAX_CONNECTIONS_PER_PEER": "8",
        "RADDRAFT_LOG_LEVEL": "WARNING",
    }
    server = Child(
        ["orders", "--host", "127.0.0.1", "--port", str(port)], env, work / "orders.log", port
    )
    figures = Figures("orders")
    figures.notes.append(f"RSS after start (baseline) {rss_mb(server.process.pid):.0f} MB")
    answers: Counter[str] = Counter()
    acked_valid: list[str] = []
    stored_expected = 0
    try:
        for number, (name, item) in enumerate(order_inputs(random.Random(seed), count), 1):
            figures.inputs += 1
            figures.families[name] += 1
            control = f"V{number}-{uuid.uuid4().hex[:6]}"
            code, after = _send_order(port, item, control)
            answers[f"{name.split(':')[1]}={code}" if code in BAD else code or "-"] += 1
            if item.codes and code not in item.codes:
                figures.unanswered.append(f"{name}->{code}")
            stored_expected += code in ANY
            if after == "AA":
                figures.serving += 1
                acked_valid.append(control)
                stored_expected += 1
            elif not server.alive():
                figures.notes.append(f"orders died after input {number} ({name})")
                break
        figures.peak_rss_mb = peak_rss_mb(server.process.pid) if server.alive() else float("nan")
    finally:
        server.stop()
    engine = create_engine(url)
    with session_scope(engine) as session:
        stored = session.scalar(select(func.count()).select_from(OrderMessage)) or 0
        taken = set(
            session.scalars(select(OrderMessage.control_id).where(OrderMessage.ack_code == "AA"))
        )
    figures.lost = max(stored_expected - stored, 0) + sum(1 for c in acked_valid if c not in taken)
    figures.stray_files = sum(
        1 for p in data.rglob("*") if p.is_file() and not p.name.startswith("raddraft.db")
    )
    figures.notes.append(
        f"ACKs: {dict(answers.most_common(12))}; "
        f"messages stored {stored} of {stored_expected} ACKed"
    )
    return figures


# -- QIDO-RS wildcard queries ----------------------------------------------------------------

#: A PN of five 60-character components (the column holds 324): long enough that a matcher
#: which backtracks through every split of a ``*`` and ``?`` pattern shows it.
LONG_NAME = "^".join(letter * 60 for letter in "ABCDE")
#: 200 (matches or not), 204, 400 (a pattern over the length bound), 503 + Retry-After (the
#: query time limit stopped it): each a clear answer; a 5xx or no answer is not.
QIDO_CLEAR = frozenset({200, 204, 503}) | CLIENT_ERROR
QIDO_PATHS = ("/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances")
QIDO_KEYS = ("PatientName", "PatientID", "AccessionNumber", "StudyDescription", "00100010")


def wildcard_patterns(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """(family, pattern) pairs: many ``*`` and ``?``, long patterns, near misses of LONG_NAME
    (PS3.4 C.2.2.2.4 wildcard matching)."""
    near = LONG_NAME[:-1] + "Z"  # matches every prefix, fails on the last character
    fixed = [
        ("wildcard:stars", "*" * 1024),
        ("wildcard:questions", "?" * 324),
        ("wildcard:star-question", "*?" * 512),
        ("wildcard:star-letter-miss", "*A" * 300 + "*Z"),
        ("wildcard:every-char-star", "*".join(near)[:1024]),
        ("wildcard:questions-then-miss", "?" * 323 + "Z"),
        ("wildcard:star-per-component-miss", "*^*^*^*^*^*Z"),
        ("wildcard:sql-metachars", "%_" * 300 + "*\\*[a-z]*"),
        ("wildcard:over-length", "*" * 1025),
        ("wildcard:far-over-length", "?" * 8000),
        ("wildcard:unicode", "*ü?€*" * 100),
        ("wildcard:list", "\\".join("*A?" for _ in range(300))),
        ("wildcard:prefix-hit", LONG_NAME[:200] + "*"),
    ]
    out = list(fixed)
    while len(out) < count:
        length = rng.choice((16, 64, 324, 700, 1024))
        alphabet = "*?*?ABCDE^Z"
        out.append(("wildcard:random", "".join(rng.choice(alphabet) for _ in range(length))))
    return out[:count]


def _get(port: int, path: str, token: str | None, timeout: float = 60) -> tuple[int | str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", path, headers={**headers, "accept": "application/dicom+json"})
        response = connection.getresponse()
        return response.status, response.read()
    except OSError as error:
        return error.__class__.__name__, b""
    finally:
        connection.close()


class HealthPoller(threading.Thread):
    """GET ``/healthz`` every 50 ms while the fuzzing runs; keeps the worst latency (a failed
    or timed-out check counts as its whole wait) and the number of failures."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.worst_ms = 0.0
        self.checks = 0
        self.failures = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            status, _ = _get(self.port, "/healthz", None, timeout=30)
            took = (time.monotonic() - started) * 1000
            self.checks += 1
            self.failures += status != 200
            self.worst_ms = max(self.worst_ms, took)
            self.done.wait(0.05)


def _named_post(port: int, token: str, seed: int) -> tuple[int | str, str]:
    """A small valid instance of the long-named patient, POSTed by STOW-RS."""
    ds = make_cxr(None, rows=32, cols=32, patient_name=LONG_NAME, seed=seed)
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return _post(
        port,
        token,
        (
            "/dicomweb/studies",
            {"content-type": dicom_type()},
            related([("application/dicom", buffer.getvalue())]),
        ),
    ), str(ds.SOPInstanceUID)


def run_wildcard(
    work: Path, seed: int, count: int, strays: Callable[[Path, Path], list[Path]]
) -> Figures:
    """Hostile QIDO-RS wildcard queries to a running ``raddraft web`` while ``/healthz`` is
    polled; after each, a valid instance of the long-named patient is stored and found."""
    from raddraft import migrate

    data = work / "wildcard-data"
    data.mkdir()
    url = f"sqlite:///{data / 'raddraft.db'}"
    migrate.upgrade(url)
    engine = create_engine(url)
    with session_scope(engine) as session:  # an administrator may both store and search
        _user, token = add_user(session, "fuzz-admin", Role.admin, display_name="fuzz^admin")
    port = free_port()
    env = {
        "RADDRAFT_DATA_DIR": str(data),
        "RADDRAFT_DATABASE_URL": url,
        "RADDRAFT_WEB_SECRET": uuid.uuid4().hex,
        "RADDRAFT_LOG_LEVEL": "WARNING",
    }
    web = Child(["web", "--host", "127.0.0.1", "--port", str(port)], env, work / "wc.log", port)
    figures = Figures("wildcard")
    figures.notes.append(f"RSS after start (baseline) {rss_mb(web.process.pid):.0f} MB")
    acked: list[str] = []
    statuses: Counter[str] = Counter()
    rng = random.Random(seed)
    found_query = f"/dicomweb/studies?PatientName={quote(LONG_NAME[:100] + '*')}"
    poller = HealthPoller(port)
    poller.start()
    try:
        answer, sop = _named_post(port, token, 0)
        if answer == 200:
            acked.append(sop)
        for number, (name, pattern) in enumerate(wildcard_patterns(rng, count), 1):
            figures.inputs += 1
            figures.families[name] += 1
            path = f"{rng.choice(QIDO_PATHS)}?{rng.choice(QIDO_KEYS)}={quote(pattern)}"
            status, _body = _get(port, path + "&limit=100", token)
            statuses[str(status)] += 1
            if status not in QIDO_CLEAR:
                figures.unanswered.append(f"{name}->{status}")
            answer, sop = _named_post(port, token, number)
            search, body = _get(port, found_query, token)
            if answer == 200:
                acked.append(sop)
            if answer == 200 and search == 200 and LONG_NAME[:100].encode() in body:
                figures.serving += 1
            elif not web.alive():
                figures.notes.append(f"web died after input {number} ({name})")
                break
        figures.peak_rss_mb = peak_rss_mb(web.process.pid) if web.alive() else float("nan")
    finally:
        poller.done.set()
        poller.join(60)
        web.stop()
    figures.healthz_worst_ms = poller.worst_ms
    with engine.connect() as connection:
        rows = dict(connection.execute(select(Instance.sop_instance_uid, Instance.path)).all())
    figures.lost = sum(
        1 for uid in acked if uid not in rows or not (data / "archive" / rows[uid]).is_file()
    )
    found = strays(work / "wildcard-data", data)
    figures.stray_files = len(found)
    if found:
        figures.notes.append(f"stray: {[str(p) for p in found[:5]]}")
    figures.notes.append(
        f"answers: {dict(statuses)}; valid POSTs stored: {len(acked)}; /healthz checks "
        f"{poller.checks}, failed {poller.failures}, worst {poller.worst_ms:.0f} ms"
    )
    return figures

"""Fuzz RadDraft's entry points over the network: the DICOM listener (beside a valid push),
STOW-RS and QIDO-RS on ``raddraft web`` and the HL7 order listener ``raddraft orders``.

    python bench/fuzz.py [--targets dicom,stow,orders,wildcard] [--inputs 1000] [--seed 1]
        [--push-rounds 0]

``--inputs`` is per target. Each target runs as its own ``python -m raddraft`` child on a
loopback port with its own data directory and SQLite database.

``dicom``: ``raddraft listen`` gets malformed or hostile inputs drawn in turn from these families
(tests/hostile.py builds them byte by byte):

- ``pdu``: raw upper-layer PDUs (PS3.8 9.3): truncated, lying or 4 GiB length fields, unknown
  types, oversized bodies, random bytes, a valid A-ASSOCIATE-RQ cut or mutated;
- ``dimse``: a valid association, then P-DATA-TF with lying PDV lengths, broken command sets,
  a C-STORE command with no data set, random fragments;
- ``stall``: half-open connections from another loopback address (127.0.0.2) that send a few
  bytes of an A-ASSOCIATE-RQ and stall (or trickle), held open through the C-ECHO that follows;
- ``context``: data sets that do not match their presentation context (a CT in a DX context,
  an implicit VR body in an explicit VR or deflated one, native pixels in JPEG or RLE), each to
  be answered 0xA900 or 0xC000; ``huge``: valid images with a 200,000 or 1,000,000 character
  indication, to be stored (0x0000);
- ``dataset``: C-STORE of hostile data sets: sequences nested thousands deep (explicit,
  implicit, UN), element lengths of up to 4 GiB, compressed pixel data declaring terabytes,
  deflate bombs, UIDs with ``/``, ``\\`` and ``..``, a wrong transfer syntax claim, non-DICOM
  payloads, Part 10 files with polyglot preambles sent as the data set, byte-level mutations.

After every input a C-ECHO checks the listener still serves. Meanwhile DCMTK ``storescu``
pushes valid studies (new instances each round); at the end every instance it saw acknowledged
must be in the database and the archive.

``stow`` and ``orders`` (bench/fuzz_entry.py): hostile multipart bodies to ``POST
/dicomweb/studies`` (lying, missing or over-long boundaries, bodies over the request limit
declared or chunked, parts declaring huge lengths, non-DICOM parts, deflate and pixel bombs,
path-traversal UIDs in the instance and the URL, random and mutated bodies), each to be
answered 4xx, a valid small POST after each to be stored (200); hostile MLLP frames (no end
block, oversized frames and fields, binary junk inside and outside frames, malformed segments,
wrong encoding characters, NUL and 8859-1 bytes, mutations) to the order listener, each
malformed one to be answered AE/AR, a valid ORM^O01 after each to get AA, every ACKed message
to be stored in ``order_messages``.

``wildcard`` (bench/fuzz_entry.py, not in the default targets): hostile QIDO-RS queries to
``raddraft web`` (PS3.18 8.3.4, PS3.4 C.2.2.2.4): patterns of many ``*`` and ``?``, near misses
and long patterns up to and over the 1024 character bound, SQL ``LIKE`` metacharacters, lists,
against studies of a patient with a 304 character PatientName, on the study, series and
instance levels; each answered 200, 204, 4xx or 503 (the query time limit). After each a
valid instance of that patient is POSTed and a search must find it; all the while a thread
polls ``/healthz`` every 50 ms, and its worst latency is ``healthz_worst_ms`` (a search must
never hold up the health check).

Figures per target: inputs tried, inputs after which it still served, its peak RSS (VmHWM from
/proc; the baseline in the same run is its RSS after start-up, printed before the RESULT),
files left outside archive/ and quarantine/ (must be 0), acknowledged instances or ACKed order
messages lost (must be 0), inputs without a clear error (must be 0). The last line sums them
(the peak is the largest) and repeats them per target:

    RESULT fuzz_inputs=<n> serving=<n> peak_rss_mb=<MB> stray_files=<n> lost=<n> unanswered=<n>
        <target>_inputs=<n> <target>_serving=<n> <target>_peak_rss_mb=<MB>
        <target>_unanswered=<n> ... [healthz_worst_ms=<ms> wildcard_healthz_worst_ms=<ms>]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz_entry import Figures, run_orders, run_stow, run_wildcard  # noqa: E402  (bench/, beside this file)
from pydicom import dcmread  # noqa: E402
from sqlalchemy import create_engine, select  # noqa: E402

from dicom_listener.tables import Instance  # noqa: E402
from raddraft import migrate  # noqa: E402
from tests import hostile  # noqa: E402
from tests.dicom_factory import CT_IMAGE, dataset_bytes, make_cxr, new_uid  # noqa: E402
from tests.listener_process import ListenerProcess, acknowledged, storescu  # noqa: E402

Input = Callable[[int, Path], object]


def _raw(data: bytes, *, then_read: bool = True) -> Input:
    """Send ``data`` on a bare TCP connection, read what comes back, close."""

    def send(port: int, _folder: Path) -> object:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                return sock.recv(64) if then_read else b""
            except OSError as error:  # the listener closing on us is an answer too
                return error.__class__.__name__

    return send


def _associated(*pdus: bytes) -> Input:
    """Associate (Verification, implicit VR LE) by hand, then send ``pdus`` raw."""

    def send(port: int, _folder: Path) -> object:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(hostile.associate_rq(calling="FUZZER"))
                if sock.recv(6)[:1] != b"\x02":
                    return "not accepted"
                sock.recv(65536)
                for pdu in pdus:
                    sock.sendall(pdu)
                sock.shutdown(socket.SHUT_WR)
                return sock.recv(64)
            except OSError as error:
                return error.__class__.__name__

    return send


def _store(data: bytes) -> Input:
    def send(port: int, folder: Path) -> object:
        return hostile.send_part10(port, data, folder)

    return send


def pdu_inputs(rng: random.Random) -> list[tuple[str, Input]]:
    rq = hostile.associate_rq()
    cases: list[tuple[str, Input]] = [
        ("pdu:4GiB-length", _raw(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF) + b"\0" * 64)),
        ("pdu:p-data-4GiB", _raw(struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0) + b"\0" * 64)),
        ("pdu:2MiB-body", _raw(struct.pack(">BBL", 0x01, 0, 2 << 20) + b"\0" * (2 << 20))),
        ("pdu:empty", _raw(b"")),
        ("pdu:header-only", _raw(b"\x01\x00")),
        ("pdu:http", _raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("pdu:tls-hello", _raw(bytes.fromhex("160301002a010000260303") + os.urandom(32))),
    ]
    for _ in range(40):
        cut = rng.randrange(1, len(rq))
        cases.append(("pdu:truncated-rq", _raw(rq[:cut])))
        kind = rng.choice([0x00, 0x08, 0x09, 0x7F, 0xFF, 0x02, 0x03, 0x05, 0x06, 0x07])
        cases.append((f"pdu:type-{kind:02x}", _raw(bytes([kind]) + rq[1:])))
        mutated = bytearray(rq)
        for _ in range(rng.randrange(1, 8)):
            mutated[rng.randrange(6, len(mutated))] = rng.randrange(256)
        cases.append(("pdu:mutated-rq", _raw(bytes(mutated))))
        lying = bytearray(rq)
        at = rng.randrange(74, len(rq) - 4)  # inside the variable items: their lengths lie
        lying[at : at + 2] = struct.pack(">H", rng.choice([0, 1, 0xFFFF, rng.randrange(65536)]))
        cases.append(("pdu:lying-item-length", _raw(bytes(lying))))
        cases.append(("pdu:random", _raw(rng.randbytes(rng.randrange(1, 4096)))))
    return cases


def dimse_inputs(rng: random.Random) -> list[tuple[str, Input]]:
    echo = hostile.c_echo_rq()
    store_rq = hostile.command_set(
        [
            (0x0002, hostile.DX_FOR_PRESENTATION.encode()),
            (0x0100, struct.pack("<H", 0x0001)),
            (0x0110, struct.pack("<H", 7)),
            (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)),
            (0x1000, new_uid().encode()),
        ]
    )
    cases: list[tuple[str, Input]] = [
        ("dimse:pdv-length-lies", _associated(hostile.p_data(echo, pdv_length=0xFFFFFFF0))),
        ("dimse:pdv-length-zero", _associated(hostile.p_data(echo, pdv_length=0))),
        ("dimse:unknown-context", _associated(hostile.p_data(echo, context_id=99))),
        ("dimse:store-without-data", _associated(hostile.p_data(store_rq))),
        ("dimse:data-before-command", _associated(hostile.p_data(b"\0" * 64, header=0x02))),
    ]
    for _ in range(40):
        broken = bytearray(echo)
        for _ in range(rng.randrange(1, 6)):
            broken[rng.randrange(len(broken))] = rng.randrange(256)
        cases.append(("dimse:mutated-command", _associated(hostile.p_data(bytes(broken)))))
        fragment = rng.randbytes(rng.randrange(0, 2048))
        header = rng.choice([0x00, 0x01, 0x02, 0x03, 0xFF])
        cases.append(
            ("dimse:random-fragment", _associated(hostile.p_data(fragment, header=header)))
        )
        cases.append(
            (
                "dimse:store-then-garbage",
                _associated(
                    hostile.p_data(store_rq), hostile.p_data(rng.randbytes(512), header=0x02)
                ),
            )
        )
    return cases


def dataset_inputs(rng: random.Random, count: int) -> list[tuple[str, Input]]:
    base = hostile.valid(64, 64)
    cases: list[tuple[str, Input]] = []
    for depth in (33, 100, 1000, 5000, 20000):
        cases.append((f"dataset:deep-{depth}", _store(hostile.deep_sequences(depth))))
        cases.append(
            (f"dataset:deep-implicit-{depth}", _store(hostile.deep_sequences(depth, implicit=True)))
        )
        cases.append((f"dataset:deep-UN-{depth}", _store(hostile.deep_sequences(depth, vr=b"UN"))))
    for rows, cols, frames in ((65535, 65535, 1000), (65535, 65535, 1), (30000, 30000, 2)):
        for syntax in (hostile.RLE, hostile.JPEG_BASELINE):
            cases.append(
                ("dataset:pixel-bomb", _store(hostile.pixel_bomb(rows, cols, frames, syntax)))
            )
    for declared in (0xFFFFFFF0, 0x7FFFFFFF, 1 << 30, 65536):
        cases.append(("dataset:lying-length", _store(hostile.lying_length(declared))))
    cases.append(("dataset:deflate-bomb", _store(hostile.deflate_bomb(64))))
    for uid in hostile.TRAVERSAL_UIDS:
        cases.append(
            ("dataset:traversal-uid", _store(hostile.with_uids(uid, new_uid(), new_uid())))
        )
        cases.append(
            ("dataset:traversal-uid", _store(hostile.with_uids(new_uid(), uid, new_uid())))
        )
        cases.append(
            ("dataset:traversal-uid", _store(hostile.with_uids(new_uid(), new_uid(), uid)))
        )
    explicit_body = base[132 + len(hostile.file_meta("1.2", hostile.EXPLICIT)) :]
    for claim in (hostile.IMPLICIT, hostile.DEFLATED, hostile.RLE, hostile.JPEG_BASELINE):
        cases.append(
            ("dataset:wrong-syntax", _store(hostile.part10(explicit_body, new_uid(), claim)))
        )
    for preamble in hostile.POLYGLOT_PREAMBLES:
        cases.append(
            (
                "dataset:polyglot-inside",
                _store(
                    hostile.part10(preamble.ljust(128, b"\0") + b"DICM" + base[132:], new_uid())
                ),
            )
        )
    for payload in (b'{"resourceType": "Patient"}', b"MSH|^~\\&|", b"\x89PNG\r\n\x1a\n", b""):
        cases.append(("dataset:not-dicom", _store(hostile.part10(payload, new_uid()))))
    mutations = hostile.mutations(rng.randrange(1 << 30), base, max(count - len(cases), 0))
    cases += [("dataset:mutation", _store(data)) for data in mutations]
    return cases


#: Inputs whose answer is known; each one answered otherwise is listed here ("unanswered").
UNCLEAR: list[str] = []
#: Half-open connections the ``stall:`` inputs hold while the next C-ECHO checks the listener.
HELD: list[socket.socket] = []
#: The attacker's address for held connections: another loopback address, so the per-address
#: cap is the attacker's, and the valid push and C-ECHO from 127.0.0.1 must still be served.
STALL_FROM = "127.0.0.2"


def _store_expect(data: bytes, statuses: frozenset[int], name: str) -> Input:
    """C-STORE ``data``; an answer not in ``statuses`` is an unclear one."""

    def send(port: int, folder: Path) -> object:
        status = hostile.send_part10(port, data, folder)
        if status not in statuses:
            UNCLEAR.append(f"{name}->{status if status is None else hex(status)}")
        return status

    return send


def _stall(count: int, cut: int, *, trickle: bool = False) -> Input:
    """Open ``count`` connections from :data:`STALL_FROM` that send ``cut`` bytes of an
    A-ASSOCIATE-RQ and then stall (one byte more, once, when ``trickle``); they stay open
    through the C-ECHO that follows, and are closed by the next ``stall:`` input or at the end
    (the listener closes them itself after RADDRAFT_ASSOCIATION_SETUP_SECONDS)."""
    rq = hostile.associate_rq()

    def send(port: int, _folder: Path) -> object:
        release_held()
        for _ in range(count):
            try:
                sock = socket.create_connection(
                    ("127.0.0.1", port), timeout=5, source_address=(STALL_FROM, 0)
                )
                sock.sendall(rq[:cut])
                if trickle:
                    sock.sendall(rq[cut : cut + 1])
            except OSError:  # refused at accept (the per-address cap): an answer too
                continue
            HELD.append(sock)
        return len(HELD)

    return send


def release_held() -> None:
    while HELD:
        HELD.pop().close()


def _body(ds: object, syntax: str) -> bytes:
    return dataset_bytes(ds, syntax)  # type: ignore[arg-type]


def edge_inputs(rng: random.Random) -> list[tuple[str, Input]]:
    """Issue 20's classes: stalled sockets, mismatched presentation contexts, huge bodies."""
    cases: list[tuple[str, Input]] = []
    for count, cut in ((20, 10), (12, 1), (30, 74), (8, 6)):
        cases.append((f"stall:half-open-{count}", _stall(count, cut)))
    cases.append(("stall:trickle", _stall(10, 40, trickle=True)))
    ct = make_cxr(None, rows=64, cols=64, seed=rng.randrange(1000))
    ct.SOPClassUID = CT_IMAGE
    cases.append(
        (
            "context:ct-in-dx",
            _store_expect(
                hostile.part10(_body(ct, hostile.EXPLICIT), str(ct.SOPInstanceUID)),
                frozenset({0xA900}),
                "context:ct-in-dx",
            ),
        )
    )
    for name, syntax, claim in (
        ("implicit-in-explicit", hostile.IMPLICIT, hostile.EXPLICIT),
        ("native-in-jpeg", hostile.EXPLICIT, hostile.JPEG_BASELINE),
        ("native-in-rle", hostile.EXPLICIT, hostile.RLE),
    ):
        ds = make_cxr(None, rows=64, cols=64, seed=rng.randrange(1000))
        data = hostile.part10(_body(ds, syntax), str(ds.SOPInstanceUID), claim)
        cases.append(
            (f"context:{name}", _store_expect(data, frozenset({0xC000}), f"context:{name}"))
        )
    for size in (200_000, 1_000_000):
        ds = make_cxr(None, rows=64, cols=64, seed=rng.randrange(1000))
        ds.ReasonForTheRequestedProcedure = "r" * size
        data = hostile.part10(_body(ds, hostile.EXPLICIT), str(ds.SOPInstanceUID))
        cases.append(
            (f"huge:indication-{size}", _store_expect(data, frozenset({0}), f"huge:{size}"))
        )
    return cases


def inputs(seed: int, total: int) -> list[tuple[str, Input]]:
    rng = random.Random(seed)
    edges = edge_inputs(rng)
    fixed = pdu_inputs(rng) + dimse_inputs(rng)
    cases = fixed + dataset_inputs(rng, total - len(fixed))
    rng.shuffle(cases)
    # Issue 20's classes always run, whatever the count; the rest fill up to it.
    cases = cases[: max(total - len(edges), 0)] + edges[:total]
    rng.shuffle(cases)
    return cases[:total]


class Rss:
    """The listener's resident memory, sampled; the peak is the kernel's VmHWM."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def field(self, name: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
        return 0.0


class Push(threading.Thread):
    """storescu rounds of new valid instances until told to stop; remembers what was acked."""

    def __init__(self, port: int, folder: Path, rounds: int) -> None:
        super().__init__(daemon=True)
        self.port, self.folder, self.rounds = port, folder, rounds
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.sent = 0

    def run(self) -> None:
        number = 0
        while not self.stop.is_set() and (self.rounds == 0 or number < self.rounds):
            number += 1
            study = new_uid()
            files = [
                make_cxr(None, rows=128, cols=128, study_uid=study, seed=i, instance_number=i)
                for i in range(1, 11)
            ]
            paths = []
            for i, ds in enumerate(files):
                path = self.folder / f"push-{number}-{i}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
            result = storescu(self.port, paths, aet="STORESCU")
            self.sent += len(paths)
            done = acknowledged(result.stdout + result.stderr)
            self.acked += [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in done]


def _expected(path: Path, work: Path, quarantine: Path) -> bool:
    if path.is_relative_to(quarantine) or path.parent in (work / "send", work / "push"):
        return True
    return path.name.startswith("raddraft.db") or path.name == "listener.log"


def stray_files(work: Path, data: Path) -> list[Path]:
    """Files under ``work`` that are not the listener's expected ones (archive, quarantine,
    database, log, the sender's own folders); and any archived file that is not at
    archive/<Study>/<Series>/<SOP>.dcm inside the archive."""
    archive, quarantine = data / "archive", data / "quarantine"
    strays = []
    for path in work.rglob("*"):
        if path.is_dir():
            continue
        if path.is_relative_to(archive):
            relative = path.resolve().relative_to(archive.resolve())
            inside = len(relative.parts) == 3 and relative.suffix == ".dcm"
            if not inside or relative.parts[0] == ".tmp":
                strays.append(path)
        elif not _expected(path, work, quarantine):
            strays.append(path)
    strays += [p for p in Path("/tmp").glob("raddraft-escape*")]
    return strays


def run_dicom(work: Path, seed: int, count: int, push_rounds: int) -> Figures:
    """Fuzz a running ``raddraft listen`` beside a valid push; prints its own figures."""
    data = work / "data"
    data.mkdir()
    (work / "send").mkdir()
    (work / "push").mkdir()
    url = f"sqlite:///{data / 'raddraft.db'}"
    migrate.upgrade(url)
    env = {
        "RADDRAFT_DATA_DIR": str(data),
        "RADDRAFT_DATABASE_URL": url,
        "RADDRAFT_ALLOWED_CALLERS": "*",
        "RADDRAFT_MAX_DATASET_MB": "16",
        "RADDRAFT_NETWORK_TIMEOUT_SECONDS": "5",
        "RADDRAFT_MAX_ASSOCIATIONS": "32",
    }
    listener = ListenerProcess(work / "listener.log", env=env).start()
    assert listener.process is not None
    rss = Rss(listener.process.pid)
    baseline = rss.field("VmRSS")
    push = Push(listener.port, work / "push", push_rounds)
    push.start()
    cases = inputs(seed, count)
    figures = Figures("dicom")
    serving = 0
    down: list[str] = []
    try:
        for number, (name, send) in enumerate(cases, 1):
            figures.families[name.split(":")[0]] += 1
            send(listener.port, work / "send")
            if listener.alive() and hostile.echo(listener.port):
                serving += 1
            else:
                down.append(name)
                if not listener.alive():
                    print(f"listener died after input {number} ({name})")
                    break
            if number % 100 == 0:
                now = rss.field("VmRSS")
                print(f"  {number} inputs, serving after {serving}, rss {now:.0f} MB")
    finally:
        release_held()
        push.stop.set()
        push.join(300)
        peak = rss.field("VmHWM") if listener.alive() else float("nan")
        listener.stop()
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = dict(connection.execute(select(Instance.sop_instance_uid, Instance.path)).all())
    lost = [
        uid for uid in push.acked if uid not in rows or not (data / "archive" / rows[uid]).is_file()
    ]
    strays = stray_files(work, data)
    quarantined = len(list((data / "quarantine").glob("*.dcm")))
    print(
        f"dicom: listener serving after each input: {serving} of {len(cases)}"
        + (f"; not after {Counter(down)}" if down else "")
    )
    print(f"dicom: listener RSS {baseline:.0f} MB after start (baseline), peak {peak:.0f} MB")
    print(
        f"dicom: quarantined {quarantined}; stray files {len(strays)} "
        f"{[str(p) for p in strays[:5]]}"
    )
    print(
        f"dicom: concurrent push: {push.sent} sent, {len(push.acked)} acknowledged, "
        f"{len(lost)} lost"
    )
    figures.inputs, figures.serving, figures.peak_rss_mb = len(cases), serving, peak
    figures.stray_files, figures.lost = len(strays), len(lost)
    figures.unanswered = list(UNCLEAR)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--push-rounds", type=int, default=0, help="0: push until fuzzing ends")
    parser.add_argument(
        "--targets",
        default="dicom,stow,orders",
        help="comma-separated: dicom, stow, orders, wildcard",
    )
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - {"dicom", "stow", "orders", "wildcard"}
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")

    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="raddraft-fuzz-") as tmp:
        work = Path(tmp)
        for target in targets:
            started = time.monotonic()
            if target == "dicom":
                figures = run_dicom(work, args.seed, args.inputs, args.push_rounds)
            elif target == "stow":
                figures = run_stow(work, args.seed, args.inputs, stray_files)
            elif target == "wildcard":
                figures = run_wildcard(work, args.seed, args.inputs, stray_files)
            else:
                figures = run_orders(work, args.seed, args.inputs)
            mix = ", ".join(f"{k} {v}" for k, v in sorted(figures.families.items()))
            took = time.monotonic() - started
            print(f"{target}: inputs tried {figures.inputs} ({mix}) in {took:.0f} s")
            print(
                f"{target}: serving after {figures.serving}, "
                f"peak RSS {figures.peak_rss_mb:.0f} MB, "
                f"stray files {figures.stray_files}, lost {figures.lost}, "
                f"without a clear error {len(figures.unanswered)} {figures.unanswered[:8]}"
            )
            for note in figures.notes:
                print(f"{target}: {note}")
            results.append(figures)
    total = sum(f.inputs for f in results)
    per_target = " ".join(
        f"{f.target}_inputs={f.inputs} {f.target}_serving={f.serving} "
        f"{f.target}_peak_rss_mb={f.peak_rss_mb:.0f} {f.target}_unanswered={len(f.unanswered)}"
        + (
            f" {f.target}_healthz_worst_ms={f.healthz_worst_ms:.0f}"
            if f.healthz_worst_ms is not None
            else ""
        )
        for f in results
    )
    polled = [f.healthz_worst_ms for f in results if f.healthz_worst_ms is not None]
    health = f" healthz_worst_ms={max(polled):.0f}" if polled else ""
    print(
        f"RESULT fuzz_inputs={total} serving={sum(f.serving for f in results)} "
        f"peak_rss_mb={max(f.peak_rss_mb for f in results):.0f} "
        f"stray_files={sum(f.stray_files for f in results)} lost={sum(f.lost for f in results)} "
        f"unanswered={sum(len(f.unanswered) for f in results)}{health} {per_target}"
    )


if __name__ == "__main__":
    main()

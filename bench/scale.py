"""Scale benchmark: what each read costs as the archive grows (issue #23).

    python bench/scale.py [--studies 1000,10000,100000] [--calls 20] [--keep] [--reuse]

For each N a fresh PostgreSQL database (127.0.0.1:5432, ``raddraft_scale_<N>``) is migrated
and seeded by :mod:`tests.scale_seed`: a part-day of finished work made by RadDraft's own code
(30 studies: archive rows and files, drafts with stages, half with a prior, views, edits,
signatures, rejections, amendments, SR/GSPS/HL7/FHIR sends recorded, jobs run), cloned
server-side into the days before it (150 studies a day), plus today's open work. One web
process (``raddraft web``, uvicorn) serves it; every endpoint is called ``--calls`` times after
two warm-up calls, and p50/p95 of the wall time are printed. In-process: the router's pass
(``route_once`` with a broker that only counts), the retention dry run, ``trace`` by
accession number and one page of ``raddraft studies``; as commands (interpreter start and
imports included): ``raddraft studies`` and ``raddraft trace``. The C-STORE ingest
rate (40 small images over one association, storescu) is measured against the seeded archive
and against an empty one.

``--keep`` keeps each database and its data directory (the archive's image files), under
``$RADDRAFT_SCALE_DATA`` (default ``<tmp>/raddraft-scale/raddraft_scale_<N>``); ``--reuse``
measures a kept database again without seeding. A kept database whose files are gone (kept by
an older bench that removed them) is measured without WADO-RS, which reads them: the bench
says so, and the RESULT line names what it did not measure.

The last line is

    RESULT worst_p95_ms=<ms> worst=<endpoint> p95_ratio_max=<x> failures=<n> ingest_ratio=<x>
           fhir_deep_offset_over_key=<x> [unmeasured=<endpoint>,...]

``worst_p95_ms``: the largest p95 at the largest N over every interactive endpoint (pages,
worklist API, report JSON, queue, metrics, QIDO, WADO metadata, FHIR search; issue #23's target
is 150 ms); ``p95_ratio_max``: their largest p95 at the largest N over their p95 at the
smallest (target 1.5); ``failures``: requests that failed at any size (target 0);
``ingest_ratio``: C-STORE ingest at the largest N over the empty archive's (target 0.9);
``fhir_deep_offset_over_key``: at the largest N, a FHIR page nine tenths into the reports asked
by ``_offset`` alone (the baseline, outside the worst) over the same page asked as a ``next``
link asks for it (``_after``), p50. The machine may be shared: numbers are noisy.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicom_listener.tables import Patient, Study  # noqa: E402
from raddraft import migrate  # noqa: E402
from raddraft.commands.studies import studies_page_query  # noqa: E402
from raddraft.db import engine_for, session_factory  # noqa: E402
from raddraft.settings import Settings  # noqa: E402
from report_drafts.tables import Report  # noqa: E402
from tests import scale_seed  # noqa: E402
from tests.conftest import reload_settings  # noqa: E402
from tests.dicom_factory import StudyIds, make_cxr  # noqa: E402

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
OWNED = (
    "page /worklist",
    "api /api/worklist",
    "api /api/worklist cursor",
    "page /reports/{id}",
    "api /api/reports/{id}",
    "page /queue",
    "api /queue/data.json",
    "/metrics",
)
OTHERS = (
    "qido /studies",
    "qido /studies/{uid}/series",
    "qido /studies/{uid}/instances",
    "wado /studies/{uid}/metadata",
    "fhir DiagnosticReport?patient",
    "fhir ImagingStudy?patient",
    "qido /studies?PatientName=A*",
    "qido /series?Modality=DX",
    "qido /instances",
    "fhir DiagnosticReport?status=final",
    "fhir ImagingStudy",
    "fhir DiagnosticReport next, deep",
    "fhir DiagnosticReport previous, deep",
)
#: Measured and printed, outside RESULT's worst: what the links above replaced, an _offset
#: nine tenths into the reports (a client may still send one; it reads every row before it).
BASELINES = ("fhir DiagnosticReport _offset, deep",)
#: What reads the archive's image files (not measured on a kept database without them).
READS_FILES = ("wado /studies/{uid}/metadata",)
PASSWORD = "correct horse battery staple"


@dataclass
class Figure:
    name: str
    p50: float
    p95: float
    failures: int = 0
    measured: bool = True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timed(call: Callable[[], Any], calls: int) -> tuple[float, float, int]:
    """p50 and p95 in ms over ``calls`` calls after two warm-ups, and the failures."""
    failures = 0
    start = time.perf_counter()
    for _ in range(2):
        try:
            failures += 0 if call() is not False else 1
        except Exception:  # a request that fails is a finding, not the end of the run
            failures += 1
    if time.perf_counter() - start > 10:  # a slow one (seconds a call): a few calls suffice
        calls = min(calls, 3)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        try:
            ok = call()
        except Exception:
            ok = False
        times.append((time.perf_counter() - start) * 1000)
        failures += 0 if ok is not False else 1
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times), p95, failures


def fresh_database(name: str) -> str:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(url)
    return url


def drop_database(name: str) -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def environment(url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RADDRAFT_DATABASE_URL": url,
        "RADDRAFT_DATA_DIR": str(data_dir),
        "RADDRAFT_DESTINATIONS": "PACS@127.0.0.1:1",
        "RADDRAFT_RIS_MLLP": "127.0.0.1:2",
        "RADDRAFT_FHIR_SERVER_URL": "http://127.0.0.1:3/fhir",
        "RADDRAFT_CRITICAL_MLLP": "127.0.0.1:4",
        "RADDRAFT_WEB_SECRET": "bench-secret-not-for-production",
        "RADDRAFT_ALLOWED_CALLERS": "*",
        "RADDRAFT_RETENTION_DAYS": "30",
        "RADDRAFT_LOG_LEVEL": "WARNING",
    }


def settings_for(env: dict[str, str]) -> Settings:
    for key, value in env.items():
        if key.startswith("RADDRAFT_"):
            os.environ[key] = value
    return reload_settings()


def wait_port(port: int, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def sign_in(base: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=120)
    form = client.get("/login").text
    found = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert found, "no sign-in form"
    answer = client.post("/login", data={"csrf_token": found[1], "token": token})
    assert answer.status_code in (200, 303), answer.status_code
    return client


def http_figures(
    base: str, tokens: dict[str, str], engine: Any, calls: int, *, files: bool = True
) -> list[Figure]:
    admin_page = sign_in(base, tokens["admin"])
    doctor_page = sign_in(base, tokens["radiologist"])
    api = httpx.Client(
        base_url=base, timeout=120, headers={"Authorization": f"Bearer {tokens['radiologist']}"}
    )
    report = scale_seed.report_ids(engine, 1)[0]
    with session_factory(engine)() as session:
        study_uid, patient_id = session.execute(
            select(Study.study_instance_uid, Patient.patient_id)
            .join(Patient, Patient.id == Study.patient_pk)
            .order_by(Study.id)
            .limit(1)
        ).one()
    cursor = api.get("/api/worklist", params={"page_size": 50}).json().get("next_cursor")
    deep, row = _deep_report(engine)

    def ok(client: httpx.Client, path: str, **params: Any) -> Callable[[], bool]:
        def call() -> bool:
            return client.get(path, params=params or None).status_code == 200

        return call

    checks: list[tuple[str, Callable[[], bool]]] = [
        ("page /worklist", ok(doctor_page, "/worklist")),
        ("api /api/worklist", ok(api, "/api/worklist", page_size=50)),
        ("api /api/worklist cursor", ok(api, "/api/worklist", page_size=50, cursor=cursor)),
        ("page /reports/{id}", ok(doctor_page, f"/reports/{report}")),
        ("api /api/reports/{id}", ok(api, f"/api/reports/{report}")),
        ("page /queue", ok(admin_page, "/queue")),
        ("api /queue/data.json", ok(admin_page, "/queue/data.json")),
        ("/metrics", ok(api, "/metrics")),
        ("qido /studies", ok(api, "/dicomweb/studies", limit=50)),
        ("qido /studies/{uid}/series", ok(api, f"/dicomweb/studies/{study_uid}/series")),
        ("qido /studies/{uid}/instances", ok(api, f"/dicomweb/studies/{study_uid}/instances")),
        ("wado /studies/{uid}/metadata", ok(api, f"/dicomweb/studies/{study_uid}/metadata")),
        ("fhir DiagnosticReport?patient", ok(api, "/fhir/DiagnosticReport", patient=patient_id)),
        ("fhir ImagingStudy?patient", ok(api, "/fhir/ImagingStudy", patient=patient_id)),
        # The archive-wide searches of issue #23's table: each a page, however large the archive.
        ("qido /studies?PatientName=A*", ok(api, "/dicomweb/studies", PatientName="A*")),
        ("qido /series?Modality=DX", ok(api, "/dicomweb/series", Modality="DX")),
        ("qido /instances", ok(api, "/dicomweb/instances")),
        ("fhir DiagnosticReport?status=final", ok(api, "/fhir/DiagnosticReport", status="final")),
        ("fhir ImagingStudy", ok(api, "/fhir/ImagingStudy")),
        # A page nine tenths into the reports as the links ask for it (by key), and by offset.
        (
            "fhir DiagnosticReport next, deep",
            ok(api, "/fhir/DiagnosticReport", _count=50, _offset=deep, _after=row),
        ),
        (
            "fhir DiagnosticReport previous, deep",
            ok(api, "/fhir/DiagnosticReport", _count=50, _offset=deep, _before=row + 1),
        ),
        (
            "fhir DiagnosticReport _offset, deep",
            ok(api, "/fhir/DiagnosticReport", _count=50, _offset=deep),
        ),
    ]
    found = []
    for name, call in checks:
        if not files and name in READS_FILES:
            found.append(Figure(name, float("nan"), float("nan"), measured=False))
            continue
        p50, p95, failures = timed(call, calls)
        found.append(Figure(name, p50, p95, failures))
    return found


def _deep_report(engine: Any) -> tuple[int, int]:
    """An offset nine tenths into the reports FHIR shows (a multiple of 50) and the report
    just before it: where a RIS paging through them all would be."""
    with session_factory(engine)() as session:
        shown = select(Report.id).where(Report.fhir_status.is_not(None))
        total = session.scalar(select(func.count()).select_from(shown.subquery())) or 0
        deep = max(total * 9 // 10 // 50 * 50, 1)
        row = session.scalar(shown.order_by(Report.id).offset(deep - 1).limit(1)) or 0
    return deep, row


class CountingBroker:
    """Stands in for Celery in the router's pass: counts what would be sent."""

    class conf:
        broker_url = "memory://"

    def __init__(self) -> None:
        self.sent = 0

    def send_task(self, *_args: Any, **_kwargs: Any) -> None:
        self.sent += 1


def in_process_figures(settings: Settings, engine: Any, calls: int) -> list[Figure]:
    import report_drafts
    from worker import router

    broker = CountingBroker()
    with session_factory(engine)() as session:
        accession = session.scalar(select(Study.accession_number).order_by(Study.id).limit(1))
    figures = []
    p50, p95, _ = timed(lambda: router.route_once(broker, settings, engine), calls)
    figures.append(Figure("router pass", p50, p95))

    def dry_run() -> None:
        with session_factory(engine)() as session:
            report_drafts.purge_candidates(session, settings)

    p50, p95, _ = timed(dry_run, max(3, calls // 4))
    figures.append(Figure("retention dry run", p50, p95))

    def trace() -> None:
        with session_factory(engine)() as session:
            report_drafts.trace(session, str(accession))

    p50, p95, _ = timed(trace, calls)
    figures.append(Figure("trace (in process)", p50, p95))

    def studies_page() -> None:
        with session_factory(engine)() as session:
            session.execute(
                studies_page_query(
                    limit=50,
                    before=None,
                    patient_id=None,
                    accession=None,
                    report_state=None,
                    since=None,
                )
            ).all()

    p50, p95, _ = timed(studies_page, calls)
    figures.append(Figure("studies page (in process)", p50, p95))
    return figures


def command_figures(env: dict[str, str], engine: Any) -> list[Figure]:
    with session_factory(engine)() as session:
        accession = session.scalar(select(Study.accession_number).order_by(Study.id).limit(1))
    found = []
    for name, args in (
        ("raddraft studies", ["studies"]),
        ("raddraft trace", ["trace", str(accession)]),
    ):
        times = []
        failures = 0
        for _ in range(3):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "raddraft", *args],
                env=env,
                capture_output=True,
                timeout=300,
                check=False,
            )
            times.append((time.perf_counter() - start) * 1000)
            failures += done.returncode != 0
        found.append(Figure(name, statistics.median(times), max(times), failures))
    return found


def ingest_rate(env: dict[str, str], images: list[Path]) -> float:
    """Images per second stored by ``raddraft listen`` (one association, storescu)."""
    port = free_port()
    listener = subprocess.Popen(
        [sys.executable, "-m", "raddraft", "listen", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, listener)
        start = time.perf_counter()
        subprocess.run(
            ["storescu", "-aec", "RADDRAFT", "-aet", "BENCH", "127.0.0.1", str(port)]
            + [str(p) for p in images],
            env={**env, "TCP_NODELAY": "1"},
            check=True,
            capture_output=True,
            timeout=600,
        )
        return len(images) / (time.perf_counter() - start)
    finally:
        stop(listener)


def small_images(folder: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        ids = StudyIds(accession=f"ING{i:05d}", patient_id=f"INGP{i:05d}")
        path = folder / f"{i}.dcm"
        make_cxr(
            path,
            patient_id=ids.patient_id,
            patient_name="INGEST^BENCH",
            study_uid=ids.study_uid,
            series_uid=ids.series_uid,
            view="PA",
            rows=256,
            cols=256,
            accession=ids.accession,
            study_date="20261204",
            instance_number=1,
            seed=i,
        )
        paths.append(path)
    return paths


def kept_data_dir(name: str) -> Path:
    """Where ``--keep`` keeps a database's data directory (its archive's files)."""
    root = os.environ.get("RADDRAFT_SCALE_DATA") or Path(tempfile.gettempdir()) / "raddraft-scale"
    return Path(root) / name


def files_present(engine: Any, data_dir: Path) -> bool:
    """Whether the archive's files are in ``data_dir`` (the first study's first image)."""
    from dicom_listener.tables import Instance, Series

    with session_factory(engine)() as session:
        path = session.scalar(
            select(Instance.path)
            .join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk)
            .order_by(Study.id, Instance.id)
            .limit(1)
        )
    return path is not None and (data_dir / "archive" / path).is_file()


def reused(url: str) -> tuple[int, dict[str, str]]:
    """A kept archive (``--keep``, then ``--reuse``): its size, and new bench users' tokens."""
    from report_drafts.users import add_user

    with session_factory(engine_for(url))() as session:
        studies = session.scalar(text("SELECT count(*) FROM studies"))
        tokens = {}
        for role in ("admin", "radiologist"):
            name = f"bench-{role}-{int(time.time())}"
            _user, tokens[role] = add_user(session, name, role, display_name="Bench^User")
        session.commit()
    return int(studies or 0), tokens


def run_size(
    studies: int, calls: int, images: list[Path], keep: bool, reuse: bool
) -> tuple[int, list[Figure], float]:
    name = f"raddraft_scale_{studies}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        kept = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
    admin.dispose()
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    reusing = bool(reuse and kept)
    if not reusing:
        url = fresh_database(name)
    if keep:
        data_dir = kept_data_dir(name)
        if not reusing:
            shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True, exist_ok=True)
    else:
        data_dir = Path(tempfile.mkdtemp(prefix=f"scale{studies}-"))
    env = environment(url, data_dir)
    settings = settings_for(env)
    engine = engine_for(url)
    files = True
    if reusing:
        actual, tokens = reused(url)
        archive = scale_seed.Archive(actual, 0, 0)
        files = files_present(engine, data_dir)
        print(f"# reusing the kept archive of {actual} studies in {data_dir}", flush=True)
        if not files:
            print(
                f"# its image files are not in {data_dir} (kept by an older bench?): "
                f"{', '.join(READS_FILES)} not measured; run once with --keep, without "
                "--reuse, to seed it again with its files",
                flush=True,
            )
    else:
        started = time.perf_counter()
        archive, seeded = scale_seed.build(engine, settings, studies=studies, template=30)
        tokens = {role: user.token for role, user in seeded.users.items()}
        took = time.perf_counter() - started
        print(f"# seeded {archive.studies} studies in {took:.0f} s", flush=True)
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "raddraft", "web", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, web)
        figures = http_figures(f"http://127.0.0.1:{port}", tokens, engine, calls, files=files)
    finally:
        stop(web)
    figures += in_process_figures(settings, engine, calls)
    figures += command_figures(env, engine)
    rate = ingest_rate(env, images)
    engine.dispose()
    if not keep:
        shutil.rmtree(data_dir, ignore_errors=True)
        drop_database(name)
    return archive.studies, figures, rate


def empty_rate(images: list[Path]) -> float:
    name = "raddraft_scale_empty"
    url = fresh_database(name)
    data_dir = Path(tempfile.mkdtemp(prefix="scale-empty-"))
    try:
        return ingest_rate(environment(url, data_dir), images)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        drop_database(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", default="1000,10000,100000")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument(
        "--reuse", action="store_true", help="measure a kept database again instead of seeding"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.studies.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="scale-images-"))
    images = small_images(folder, 40)
    empty = empty_rate(images)
    print(f"# ingest into an empty archive: {empty:.1f} img/s", flush=True)
    results: dict[int, dict[str, Figure]] = {}
    rates: dict[int, float] = {}
    for size in sizes:
        actual, figures, rate = run_size(
            size, args.calls, images, args.keep or args.reuse, args.reuse
        )
        results[size] = {f.name: f for f in figures}
        rates[size] = rate
        for f in figures:
            if not f.measured:
                print(f"N={actual:>7}  {f.name:<32} not measured (no files)", flush=True)
                continue
            print(
                f"N={actual:>7}  {f.name:<32} p50 {f.p50:9.1f} ms  p95 {f.p95:9.1f} ms"
                + (f"  FAILED {f.failures}" if f.failures else ""),
                flush=True,
            )
        print(f"N={actual:>7}  {'C-STORE ingest':<32} {rate:.1f} img/s ({rate / empty:.2f}x empty)")
    shutil.rmtree(folder, ignore_errors=True)
    first, last = results[sizes[0]], results[sizes[-1]]

    unmeasured = [n for n in OWNED + OTHERS if not (first[n].measured and last[n].measured)]
    interactive = [n for n in OWNED + OTHERS if n not in unmeasured]
    slowest = max(interactive, key=lambda n: last[n].p95)
    ratio = max(last[n].p95 / max(first[n].p95, 1e-6) for n in interactive)
    failures = sum(f.failures for figures in results.values() for f in figures.values())
    keyed, by_offset = last["fhir DiagnosticReport next, deep"], last[BASELINES[0]]
    print(
        f"RESULT worst_p95_ms={last[slowest].p95:.1f} worst={slowest.replace(' ', '_')} "
        f"p95_ratio_max={ratio:.2f} failures={failures} ingest_ratio={rates[sizes[-1]] / empty:.2f}"
        f" fhir_deep_offset_over_key={by_offset.p50 / max(keyed.p50, 1e-6):.2f}"
        + (f" unmeasured={','.join(n.replace(' ', '_') for n in unmeasured)}" if unmeasured else "")
    )


if __name__ == "__main__":
    main()

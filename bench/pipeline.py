"""Push two-view studies through the embedded stack and time what happens outside the model.

    python bench/pipeline.py [--studies 20] [--model PATH] [--max-new-tokens 8]

RadDraft runs as in the README (``raddraft up --without web``: SQLite, the filesystem broker,
a real Celery gpu worker with the tiny checkpoint loaded through ``from_pretrained``). DCMTK
storescu is the modality. For each study the bench reads from the database:

* push done: storescu returned (every instance acknowledged, association released);
* complete: the listener closed the study version (the completion rule's wait is policy:
  a short burst grace after frontal + lateral, RADDRAFT_COMPLETION_* settings);
* drafted: the lifecycle stored version 1 of the report;
* model: the reading's own time, as the worker recorded it.

``overhead`` = drafted - complete - model: dispatch, broker, claim, prior lookup, image loading
outside the reading, SR/GSPS building, database writes. The named baseline, measured in the same
run, is the model alone: the same studies read in this process by ``Reader.read``.

Phase 1 pushes one study at a time and waits for its draft (latency with no queue); phase 2
pushes all of them at once (throughput). Last line:
``RESULT studies_per_min=<phase 2> overhead_ms_p50=<phase 1>``. Target: overhead_ms_p50 <= 250.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text

CACHE = Path(__file__).resolve().parent / ".cache"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 120) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the listener did not open port {port}")


def _studies(count: int, folder: Path) -> list[tuple[str, list[Path]]]:
    from tests.dicom_factory import StudyIds, make_study

    out: list[tuple[str, list[Path]]] = []
    for index in range(count):
        ids = StudyIds(patient_id=f"BENCH{index:03d}")
        _, files = make_study(
            folder / f"s{index:03d}", ("PA", "LATERAL"), ids=ids, rows=1024, cols=896
        )
        out.append((ids.study_uid, files))
    return out


def _push(port: int, files: list[Path]) -> float:
    subprocess.run(
        ["/usr/bin/storescu", "-aet", "BENCH", "127.0.0.1", str(port), *map(str, files)],
        check=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
    )
    return time.time()


def _row(engine: object, study_uid: str) -> dict[str, float] | None:
    query = text("""
        SELECT sv.completed_at, rv.created_at, j.timings
        FROM studies s JOIN study_versions sv ON sv.study_pk = s.id
        JOIN reports r ON r.study_version_pk = sv.id
        JOIN report_versions rv ON rv.report_pk = r.id AND rv.number = 1
        JOIN jobs j ON j.key = sv.job_key
        WHERE s.study_instance_uid = :uid""")
    with engine.connect() as conn:  # type: ignore[attr-defined]
        found = conn.execute(query, {"uid": study_uid}).first()
    if found is None:
        return None
    import json
    from datetime import datetime

    def epoch(value: object) -> float:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        return moment.replace(tzinfo=moment.tzinfo or __import__("datetime").UTC).timestamp()

    timings = found[2] if isinstance(found[2], dict) else json.loads(found[2])
    return {
        "complete": epoch(found[0]),
        "drafted": epoch(found[1]),
        "model": float(timings.get("model_s", 0.0)),
    }


def _wait(engine: object, study_uid: str, timeout: float = 600) -> dict[str, float]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = _row(engine, study_uid)
        if row is not None:
            return row
        time.sleep(0.02)
    raise TimeoutError(f"no draft for {study_uid}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _model_alone(model: Path, studies: list[tuple[str, list[Path]]], tokens: int) -> list[float]:
    """The baseline: the same reading in this process, no listener, queue or database."""
    import models

    reader = models.load_reader(models.ReaderConfig(model=str(model), max_new_tokens=tokens))
    times = []
    for _, files in studies:
        started = time.perf_counter()
        reader.read([models.StudyImage.from_path(f) for f in files])
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()

    model = args.model or CACHE / "tiny-qwen2.5-vl"
    if args.model is None and not (model / "config.json").exists():
        from models import build_tiny

        build_tiny(model)
    studies = _studies(args.studies * 2, CACHE / "pipeline-studies")
    sequential, burst = studies[: args.studies], studies[args.studies :]

    work = Path(tempfile.mkdtemp(prefix="raddraft-bench-"))
    port = _free_port()
    env = {
        **os.environ,
        "RADDRAFT_DATA_DIR": str(work / "data"),
        "RADDRAFT_DICOM_PORT": str(port),
        "RADDRAFT_DICOM_HOST": "127.0.0.1",
        "RADDRAFT_ALLOWED_CALLERS": "BENCH",
        "RADDRAFT_MODEL": str(model),
        "RADDRAFT_MAX_NEW_TOKENS": str(args.max_new_tokens),
        "RADDRAFT_DATABASE_URL": "",
        "RADDRAFT_BROKER_URL": "",
        "RADDRAFT_LOG_LEVEL": "WARNING",
    }
    log = (work / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "raddraft", "up", "--without", "web"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    engine = create_engine(f"sqlite:///{work / 'data' / 'raddraft.db'}")
    try:
        # Warm up: the worker loads the model and the first draft pays one-off imports.
        warm_uid, warm_files = _studies(1, work / "warm")[0]
        _wait_for_port(port)
        _push(port, warm_files)
        _wait(engine, warm_uid)

        latency, completion, overhead, model_s = [], [], [], []
        for uid, files in sequential:
            pushed = _push(port, files)
            row = _wait(engine, uid)
            latency.append(row["drafted"] - pushed)
            completion.append(row["complete"] - pushed)
            overhead.append(row["drafted"] - row["complete"] - row["model"])
            model_s.append(row["model"])

        started = time.time()
        for _, files in burst:
            _push(port, files)
        rows = [_wait(engine, uid) for uid, _ in burst]
        per_min = len(burst) / (max(r["drafted"] for r in rows) - started) * 60
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(60)
    alone = _model_alone(model, sequential, args.max_new_tokens)

    ms = 1000.0
    print(
        f"studies: {args.studies} sequential + {args.studies} burst, two views each, "
        f"{args.max_new_tokens} new tokens per turn, model {model.name}"
    )
    print(
        f"push-to-draft latency       p50 {_pct(latency, 0.5) * ms:8.0f} ms   "
        f"p95 {_pct(latency, 0.95) * ms:8.0f} ms"
    )
    print(
        f"  completion wait (policy)  p50 {_pct(completion, 0.5) * ms:8.0f} ms   "
        f"p95 {_pct(completion, 0.95) * ms:8.0f} ms"
    )
    print(
        f"  model (in the worker)     p50 {_pct(model_s, 0.5) * ms:8.0f} ms   "
        f"p95 {_pct(model_s, 0.95) * ms:8.0f} ms"
    )
    print(
        f"  overhead outside model    p50 {_pct(overhead, 0.5) * ms:8.0f} ms   "
        f"p95 {_pct(overhead, 0.95) * ms:8.0f} ms"
    )
    ratio = statistics.median(model_s) / statistics.median(alone)
    print(
        f"baseline: model alone in-process p50 {statistics.median(alone) * ms:8.0f} ms "
        f"(stack's model time / baseline = {ratio:.2f})"
    )
    print(
        f"burst throughput: {per_min:.1f} studies/min "
        f"(model-alone bound {60 / statistics.median(alone):.1f})"
    )
    print(f"RESULT studies_per_min={per_min:.2f} overhead_ms_p50={_pct(overhead, 0.5) * ms:.0f}")


if __name__ == "__main__":
    main()

"""Studies per hour against studies in flight, one GPU worker: the OpenAI-compatible backend,
or (``--backend transformers``) the in-process engine.

    python bench/throughput.py [--in-flight 1,4,16,64] [--studies-per-slot 4]
                               [--per-token-ms 15] [--first-token-ms 40] [--server URL]
    python bench/throughput.py --backend transformers [--in-flight 1,8] [--model PATH]
                               [--max-new-tokens 16] [--threads 1]

A study's questions are sequential (each stage reads the answers before it), so a GPU serves
many studies an hour only with many studies in flight: the worker's threads pool
(``RADDRAFT_STUDIES_IN_FLIGHT``) runs that many readings at once through one thread-safe
:class:`models.Reader` on the OpenAI backend, and the server (vLLM) batches their sequences.

Without ``--server`` the server is simulated here, on the CPU: an OpenAI-compatible HTTP server
that answers CheXOne's prompts like ``tests/worker/model_server.py`` (a left pleural effusion)
after a realistic delay: ``first-token-ms`` plus ``per-token-ms`` per answer token (about 4
characters a token), each request on its own, as continuous batching serves a few dozen
sequences, in its own process as vLLM is. It therefore measures RadDraft's side: that readings
really overlap and what the client costs (image preparation, PNG data URLs, JSON), not a GPU's
limits. With ``--server`` it measures a real server (vLLM serving a random-weight
Qwen2.5-VL-3B, say) the same way.

Each level reads ``studies-per-slot x in-flight`` studies (two 1200x1000 12-bit DX views: a
current PA and a prior) through a pool of that many threads; four a slot by default, so the
steady state outweighs the start, when every thread prepares its images at once. The baseline
is one at a time (in flight 1) in the same run. The last line is
``RESULT studies_per_hour_1=<a> ... scaling_16=<x> scaling_64=<y>``; the target is near-linear
scaling to 16 in flight on the simulated server (scaling_16 near 16).

With ``--backend transformers`` the readings run in this process on the model itself (default:
the tiny random-weight checkpoint, built fresh; ``--model`` for another, on ``--device``): the
engine batches the turns of all studies in flight into shared forward passes. Every reading is
the default one (eight stages, then the single-turn report prompts) with ``--max-new-tokens`` a
turn; ``--studies-per-slot`` defaults to 2 there. ``--repeats N`` measures the levels N times
in turn and keeps each level's best run (the RESULT line is made of those); before them, one
round at the highest level grows the engine's store, as a worker's first minutes do. The target
on the tiny model on a CPU is ``scaling_8`` of at least 3.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _serve(first_token_s: float, per_token_s: float, ports: Any) -> None:
    """The simulated server's process: answer until terminated."""
    from tests.worker.model_server import answer, send_json

    counts = {"requests": 0, "in_flight": 0, "most_in_flight": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a client pool expects
        # Headers and body go out as two writes: with Nagle's algorithm on, the client's
        # delayed ACK would add 40 ms to every answer, a delay no real server has.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            with lock:
                now = dict(counts)
            send_json(self, now)

        def do_POST(self) -> None:
            with lock:
                counts["requests"] += 1
                counts["in_flight"] += 1
                counts["most_in_flight"] = max(counts["most_in_flight"], counts["in_flight"])
            started = time.perf_counter()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            last = body["messages"][-1]["content"]
            question = last if isinstance(last, str) else last[-1]["text"]
            text = answer(question)
            tokens = max(1, len(text) // 4)
            delay = first_token_s + tokens * per_token_s
            time.sleep(max(0.0, delay - (time.perf_counter() - started)))
            reply = {
                "choices": [{"index": 0, "message": {"content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 400, "completion_tokens": tokens},
            }
            send_json(self, reply)
            with lock:
                counts["in_flight"] -= 1

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 512
        daemon_threads = True

    httpd = Server(("127.0.0.1", 0), Handler)
    ports.put(httpd.server_address[1])
    httpd.serve_forever()


class SimulatedServer:
    """``POST /v1/chat/completions`` answering like a model that needs time per token.

    It runs in its own process, as vLLM does: in this one it would share the interpreter lock
    with the client's threads, and the benchmark would measure that contention instead of the
    client's work.
    """

    def __init__(self, first_token_s: float, per_token_s: float) -> None:
        context = multiprocessing.get_context("spawn")
        ports = context.Queue()
        self.process = context.Process(
            target=_serve, args=(first_token_s, per_token_s, ports), daemon=True
        )
        self.process.start()
        self.url = f"http://127.0.0.1:{ports.get(timeout=60)}/v1"

    def counts(self) -> dict[str, int]:
        """Requests answered so far and the most in flight at once."""
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as response:
            return dict(json.load(response))

    def close(self) -> None:
        self.process.terminate()
        self.process.join(10)


def studies(count: int) -> list[tuple[Any, Any]]:
    """``count`` distinct (current, prior) pairs of synthetic DX views."""
    from models import StudyImage
    from tests.dicom_factory import make_cxr

    return [
        (
            StudyImage.from_dataset(make_cxr(rows=1200, cols=1000, seed=2 * i, view="PA")),
            StudyImage.from_dataset(make_cxr(rows=1200, cols=1000, seed=2 * i + 1, view="PA")),
        )
        for i in range(count)
    ]


def level(reader: Any, pairs: list[tuple[Any, Any]], in_flight: int, n: int) -> dict[str, float]:
    """Read ``n`` studies, ``in_flight`` at a time; studies per hour and latency."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        current, prior = pairs[index % len(pairs)]
        started = time.perf_counter()
        reading = reader.read([current], [prior])
        if not reading.findings_text:
            raise RuntimeError("a reading came back without its findings text")
        with lock:
            latencies.append(time.perf_counter() - started)

    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "studies": n,
        "wall_s": wall,
        # The client's CPU per study (the simulated server has its own process): when wall
        # time per study nears it, the worker's interpreter lock is the limit, whatever the GPU.
        "cpu_per_study_s": (time.process_time() - cpu) / n,
        "per_hour": n / wall * 3600,
        "p50_s": latencies[len(latencies) // 2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--in-flight", default="1,4,16,64")
    parser.add_argument("--studies-per-slot", type=int, default=4)
    parser.add_argument("--first-token-ms", type=float, default=40.0)
    parser.add_argument("--per-token-ms", type=float, default=15.0)
    parser.add_argument("--server", default="", help="a real OpenAI-compatible server's URL")
    parser.add_argument("--model", default="", help="default: CheXOne (openai), tiny (else)")
    parser.add_argument("--backend", choices=["openai", "transformers"], default="openai")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="transformers only")
    parser.add_argument("--device", default="auto", help="transformers only")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="transformers only: measure the levels this many times, in turn, and keep each "
        "level's best (a machine shared with other work slows some runs, never speeds one up)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.backend == "transformers":
        in_process(args)
        return

    from models import ReaderConfig, load_reader

    simulated = None
    url = args.server
    if not url:
        simulated = SimulatedServer(args.first_token_ms / 1000, args.per_token_ms / 1000)
        url = simulated.url
    scratch = tempfile.TemporaryDirectory()
    reader = load_reader(
        ReaderConfig(
            backend="openai",
            server_url=url,
            model=args.model or "StanfordAIMI/CheXOne",
            data_dir=Path(scratch.name),
        )
    )
    levels = [int(x) for x in args.in_flight.split(",") if x.strip()]
    pairs = studies(8)
    where = "simulated server" if simulated else url
    print(
        f"server: {where}; first token {args.first_token_ms:.0f} ms, "
        f"{args.per_token_ms:.0f} ms per token; {os.cpu_count()} CPUs here"
    )
    reader.read([pairs[0][0]], [pairs[0][1]])  # warm-up: connections, imports
    requests_before = simulated.counts()["requests"] if simulated else 0
    results: dict[int, dict[str, float]] = {}
    print(f"load average at start {os.getloadavg()[0]:.1f}")
    print("in flight  studies   wall s  studies/h   p50 s  cpu s/study  ratio to 1")
    for k in levels:
        results[k] = level(reader, pairs, k, max(args.studies_per_slot * k, 4))
        base = results[levels[0]]["per_hour"]
        r = results[k]
        print(
            f"{k:9d}  {int(r['studies']):7d}  {r['wall_s']:7.1f}  {r['per_hour']:9.0f}  "
            f"{r['p50_s']:6.2f}  {r['cpu_per_study_s']:11.3f}  {r['per_hour'] / base:6.2f}"
        )
    if simulated:
        done = sum(int(r["studies"]) for r in results.values())
        counts = simulated.counts()
        print(
            f"requests per study {(counts['requests'] - requests_before) / done:.1f}; "
            f"most requests in flight at the server {counts['most_in_flight']}"
        )
        simulated.close()
    base = results[levels[0]]["per_hour"]
    print(
        "RESULT "
        + " ".join(f"studies_per_hour_{k}={r['per_hour']:.0f}" for k, r in results.items())
        + " "
        + " ".join(f"scaling_{k}={r['per_hour'] / base:.2f}" for k, r in results.items() if k != 1)
    )
    scratch.cleanup()


def in_process(args: argparse.Namespace) -> None:
    """The same levels on the transformers backend: one engine, readings from many threads."""
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from models import ModelInfo, Reader, ReaderConfig, build_tiny, load_backend

    scratch = tempfile.TemporaryDirectory()
    model = args.model or str(build_tiny(Path(scratch.name) / "tiny"))
    config = ReaderConfig(
        model=model,
        data_dir=Path(scratch.name),
        device=args.device,
        max_new_tokens=args.max_new_tokens,
        max_new_tokens_reasoning=args.max_new_tokens,
    )
    backend: Any
    backend, info = load_backend(config)
    reader = Reader(backend, config, ModelInfo(info.model_id, info.revision, info.demo, "x", ""))
    levels = [int(x) for x in args.in_flight.split(",") if x.strip()]
    per_slot = args.studies_per_slot if args.studies_per_slot != 4 else 2
    # Every study of a level has its own images, as a worker's do: with pairs repeated, a study
    # would reuse the kept prefill of the earlier study with the same images, which a real
    # worker never sees, and the levels reading more studies would gain most from it.
    pairs = studies(max(per_slot * max(levels), 2))
    print(
        f"model {info.model_id} on {backend.device}, {torch.get_num_threads()} torch threads, "
        f"{args.max_new_tokens} new tokens a turn; {os.cpu_count()} CPUs here; "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    reader.read([pairs[0][0]], [pairs[0][1]])  # warm-up
    # The engine's store grows (by doubling) to what many studies in flight keep, once in a
    # worker's life: grown here first, so that no level pays it inside its figures.
    level(reader, pairs, max(levels), max(levels))
    engine = backend.engine
    results: dict[int, dict[str, float]] = {}
    print("in flight  studies   wall s  studies/h   p50 s  cpu s/study  rows/pass  ratio to 1")
    for k in [k for _ in range(max(args.repeats, 1)) for k in levels]:
        backend.reset_cache()
        passes, rows = engine.forward_passes, engine.rows_decoded
        spent, prefill = engine.forward_seconds, engine.prefill_seconds
        found = level(reader, pairs, k, max(per_slot * k, 2))
        found["forward_s"] = engine.forward_seconds - spent
        found["prefill_s"] = engine.prefill_seconds - prefill
        if k not in results or found["per_hour"] > results[k]["per_hour"]:
            results[k] = found
        r, base = found, results[levels[0]]["per_hour"]
        decoded = (engine.rows_decoded - rows) / max(engine.forward_passes - passes, 1)
        print(
            f"{k:9d}  {int(r['studies']):7d}  {r['wall_s']:7.1f}  {r['per_hour']:9.0f}  "
            f"{r['p50_s']:6.2f}  {r['cpu_per_study_s']:11.3f}  {decoded:9.1f}  "
            f"{r['per_hour'] / base:6.2f}"
        )
    for k, r in results.items():
        print(
            f"{k} in flight: forward passes {r['forward_s']:.1f} s of {r['wall_s']:.1f} s wall "
            f"(with new prompts {r['prefill_s']:.1f} s, "
            f"decode only {r['forward_s'] - r['prefill_s']:.1f} s)"
        )
    base = results[levels[0]]["per_hour"]
    cpu_base = results[levels[0]]["cpu_per_study_s"]
    # On a machine shared with other work wall time scatters; CPU time per study is this
    # process's own work, and with the model's work in one engine thread it bounds throughput.
    print(
        "CPU time per study against one at a time: "
        + " ".join(
            f"{k}: {cpu_base / r['cpu_per_study_s']:.2f}x" for k, r in results.items() if k != 1
        )
        + f"; load average at the end {os.getloadavg()[0]:.1f}"
    )
    print(
        "RESULT backend=transformers "
        + " ".join(f"studies_per_hour_{k}={r['per_hour']:.0f}" for k, r in results.items())
        + " "
        + " ".join(f"scaling_{k}={r['per_hour'] / base:.2f}" for k, r in results.items() if k != 1)
    )
    scratch.cleanup()


if __name__ == "__main__":
    main()

"""Where one reading's wall time goes: inside the model's forward passes, or around them.

    python bench/reading_profile.py [--max-new-tokens 32] [--repeats 3] [--torch-profiler]

One study (current and prior DX), the default reading (eight CXRTrek stages, then the
single-turn report prompts), on the tiny checkpoint built fresh (``--model`` for another), one
torch thread. Forward hooks on the model's parts that compute (the vision encoder, the language
model, the LM head) add up the time spent inside them; on a GPU each hook synchronises first, so
that time is the device's. The rest of the wall time is the reading's own overhead: templates,
tokenising, positions, cache bookkeeping, decoding text, parsing.

``--torch-profiler`` also prints torch.profiler's table of the reading's most expensive calls.
On the CPU the same share is also given in CPU time (this process's, and each forward pass's
own thread's), which a machine shared with other work leaves steady while wall time scatters.
The last line is ``RESULT forward_share=<x> forward_share_cpu=<y> wall_s=<s> turns=<n>
new_tokens=<m>``; the target is a forward share of at least 0.85 (a turn costs its new tokens'
prefill and its decode steps).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class ForwardClock:
    """Seconds spent inside the given modules' forward passes (outermost calls only)."""

    def __init__(self, modules: list[Any], sync: Any = None) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # this thread's CPU time inside them
        self.calls = 0
        self._depth = 0
        self._started = 0.0
        self._cpu_started = 0.0
        self._sync = sync
        for module in modules:
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._leave)

    def _enter(self, *args: Any) -> None:
        if self._depth == 0:
            if self._sync:
                self._sync()
            self._started = time.perf_counter()
            self._cpu_started = time.thread_time()
        self._depth += 1

    def _leave(self, *args: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            if self._sync:
                self._sync()
            self.seconds += time.perf_counter() - self._started
            self.cpu_seconds += time.thread_time() - self._cpu_started
            self.calls += 1


def model_parts(model: Any) -> list[Any]:
    """The modules whose forward passes are model work: the vision encoder, the token
    embedding (called on its own before the language model, by generate and by the engine
    alike), the language model and the LM head."""
    language = model.model.language_model
    return [model.model.visual, language.embed_tokens, language, model.lm_head]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="hub id or folder (default: tiny, built fresh)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torch-profiler", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from staged import radiograph  # this folder (the script runs as `python bench/...`)

    from models import ModelInfo, Reader, ReaderConfig, StudyImage, build_tiny, load_backend

    scratch = tempfile.TemporaryDirectory()
    model = args.model or str(build_tiny(Path(scratch.name) / "tiny"))
    config = ReaderConfig(
        model=model,
        data_dir=Path(scratch.name),
        max_new_tokens=args.max_new_tokens,
        max_new_tokens_reasoning=args.max_new_tokens,
    )
    backend: Any
    backend, info = load_backend(config)
    reader = Reader(backend, config, ModelInfo(info.model_id, info.revision, info.demo, "x", ""))
    on_gpu = str(backend.device).startswith("cuda")
    clock = ForwardClock(model_parts(backend.model), torch.cuda.synchronize if on_gpu else None)
    current = StudyImage.from_dataset(radiograph(2048, 1700, 1))
    prior = StudyImage.from_dataset(radiograph(2000, 1800, 2))

    def read() -> Any:
        backend.reset_cache()
        return reader.read([current], [prior])

    read()  # warm-up: first-call costs are not a reading's
    best: tuple[float, float, Any] | None = None
    cpu_best: tuple[float, float] | None = None
    for _ in range(args.repeats):
        clock.seconds = clock.cpu_seconds = 0.0
        started, cpu = time.perf_counter(), time.process_time()
        reading = read()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        if best is None or wall < best[0]:
            best = (wall, clock.seconds, reading)
        if cpu_best is None or cpu < cpu_best[0]:
            cpu_best = (cpu, clock.cpu_seconds)
    assert best is not None and cpu_best is not None
    wall, inside, reading = best
    turns = sum(len(s.turns) for s in reading.stages) + len(reading.report_turns)
    print(
        f"model {info.model_id} on {backend.device}, {torch.get_num_threads()} torch threads; "
        f"{turns} turns, {reading.completion_tokens} new tokens, {reading.prompt_tokens} prompt "
        f"tokens (before reuse)"
    )
    print(
        f"reading {wall:.3f} s (best of {args.repeats}), inside forward passes {inside:.3f} s "
        f"({inside / wall:.1%}), around them {wall - inside:.3f} s "
        f"({(wall - inside) / turns * 1000:.1f} ms a turn)"
    )
    cpu, cpu_inside = cpu_best
    print(
        f"CPU time (steady on a shared machine): reading {cpu:.3f} s, inside forward passes "
        f"{cpu_inside:.3f} s ({cpu_inside / cpu:.1%}); load average {os.getloadavg()[0]:.1f}"
    )
    if args.torch_profiler:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
        with profile(activities=activities) as prof:
            read()
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
    print(
        f"RESULT forward_share={inside / wall:.3f} forward_share_cpu={cpu_inside / cpu:.3f} "
        f"wall_s={wall:.3f} turns={turns} "
        f"new_tokens={reading.completion_tokens}"
    )
    scratch.cleanup()


if __name__ == "__main__":
    main()

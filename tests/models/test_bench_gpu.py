"""bench/gpu.py --smoke: every step of the GPU benchmark on a small 2-layer model on the CPU, so
that the script a GPU session runs cannot rot between GPU sessions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_smoke_runs_every_step() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = dict(item.split("=", 1) for item in last.split()[1:])
    for key in ("ms_per_token", "stock_ms_per_token", "reading_s", "forward_share", "draft_s"):
        assert float(result[key]) > 0, key
    assert float(result["draft_s"]) < float(result["reading_s"])  # the draft comes first
    assert "studies_per_hour_1" in result and "scaling_2" in result
    # On the CPU a pass's host time is its device time (nothing runs asynchronously).
    assert float(result["host_ms_per_pass_2"]) == float(result["device_ms_per_pass_2"]) > 0
    # On the CPU bf16 rounds the same in every split and batch: the engine equals
    # transformers' own forward, and eight studies batched equal each alone, exactly.
    assert float(result["bf16_cache_vs_transformers"]) <= float(result["bf16_noise_floor"])
    assert float(result["bf16_batched_vs_alone"]) <= float(result["bf16_noise_floor"])

"""Running bench/fuzz.py for one target from a test and reading its RESULT line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fuzz(target: str, inputs: int, seed: int) -> tuple[dict[str, int], str]:
    """The RESULT line's figures (ints) and the whole output."""
    run = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            str(ROOT / "bench" / "fuzz.py"),
            "--targets",
            target,
            "--inputs",
            str(inputs),
            "--seed",
            str(seed),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    line = re.search(r"^RESULT (.*)$", run.stdout, re.MULTILINE)
    assert line, output[-4000:]
    figures = dict(item.split("=", 1) for item in line[1].split())
    return {name: int(value) for name, value in figures.items()}, output

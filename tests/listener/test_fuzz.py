"""The short CI run of bench/fuzz.py: hostile inputs over the network beside a valid push.

The full run (``python bench/fuzz.py``, 1,000 inputs) is for developers; this one sends 150
from every family and holds the figures to what the RESULT line must say; issue 20's classes
(stalled sockets, mismatched contexts, huge indications) run in every count.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fuzz_short_run_keeps_serving_and_loses_nothing() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            str(ROOT / "bench" / "fuzz.py"),
            "--inputs",
            "150",
            "--seed",
            "7",
            "--targets",
            "dicom",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    result = re.search(
        r"^RESULT fuzz_inputs=(\d+) serving=(\d+) peak_rss_mb=(\d+) stray_files=(\d+) lost=(\d+) ",
        run.stdout,
        re.MULTILINE,
    )
    assert result, output[-4000:]
    inputs, serving, peak, stray, lost = map(int, result.groups())
    assert inputs == 150
    assert serving == inputs, output[-4000:]
    assert stray == 0 and lost == 0, output[-4000:]
    assert peak < 400  # MB; a 4 GiB PDU length or a bomb decoded would show here
    unanswered = re.search(r" unanswered=(\d+) ", run.stdout)
    assert unanswered and unanswered[1] == "0", output[-4000:]  # contexts: 0xA900/0xC000
    families = re.search(r"inputs tried \d+ \(([^)]*)\)", run.stdout)
    assert families, output[-4000:]
    for family in ("stall", "context", "huge"):  # issue 20's classes always run
        assert f"{family} " in families[1], families[1]
    pushed = re.search(r"concurrent push: (\d+) sent, (\d+) acknowledged", run.stdout)
    assert pushed and int(pushed[2]) > 0 and pushed[1] == pushed[2], output[-4000:]

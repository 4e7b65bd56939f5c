"""Each process says in one line what it serves and logs nothing at start that is not the
user's to act on: no Celery banner, no "No hostname was supplied", no alembic plugin list, no
uvicorn start-up lines, no Python warnings (embedded mode, SQLite)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from raddraft.settings import Settings
from tests.conftest import free_port
from tests.processes import raddraft_env, running, wait_for

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

NOISE = (
    "WARNING",
    "Warning",
    "-------------- celery@",
    "[tasks]",
    "No hostname was supplied",
    "setup plugin",
    "Started server process",
    "Waiting for application startup",
    "Connected to",
)


def test_one_line_per_process_and_no_noise(settings: Settings, tmp_path: Path) -> None:
    port, web_port = free_port(), free_port()
    env = raddraft_env(
        RADDRAFT_DICOM_PORT=str(port), RADDRAFT_WEB_PORT=str(web_port), PYTHONWARNINGS="default"
    )
    starts = {
        "listener": ("listen", rf"listening ae=RADDRAFT host=\S+ port={port} tls=False"),
        "router": ("router", r"router started broker=filesystem://"),
        "io": ("worker -Q io", r"worker serving queues=io model='none \(no gpu queue\)'"),
        "gpu": ("worker -Q gpu --no-model", r"worker serving queues=gpu .*pool=solo"),
        "web": ("web", rf"web serving url=http://127\.0\.0\.1:{web_port}/ api_docs=\S+/docs"),
    }
    argvs = {name: argv.split() for name, (argv, _line) in starts.items()}
    with running(argvs, env, tmp_path) as procs:
        for name, (_argv, line) in starts.items():
            path = procs[name].log_path
            wait_for(
                lambda path=path, line=line: (
                    path.exists() and re.search(line, path.read_text(errors="replace")) is not None
                ),
                90,
                f"{name}'s start line",
                procs,
            )
        # the libraries finish starting after our line (Celery's banner, uvicorn's lines)
        time.sleep(3)
        logs = {name: proc.log_path.read_text(errors="replace") for name, proc in procs.items()}
    for name, text in logs.items():
        lines = [ln for ln in text.splitlines() if ln.strip()]
        start = [ln for ln in lines if re.search(starts[name][1], ln)]
        assert len(start) == 1, f"{name}: {lines}"
        noisy = [ln for ln in lines if any(n in ln for n in NOISE)]
        assert noisy == [], f"{name} logged noise at start:\n" + "\n".join(noisy)

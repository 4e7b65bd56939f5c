"""Starting RadDraft's own processes (``python -m raddraft ...``) from tests, and stopping them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class RadDraftProcess:
    """One ``raddraft`` subcommand in a child process, its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RadDraftProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "raddraft", *self.argv],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """Kill the whole process group at once, as a power cut or OOM killer would."""
        if self.process and self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 20) -> None:
        if self.process and self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def raddraft_env(**overrides: str) -> dict[str, str]:
    """The environment for a child: this one, RADDRAFT_* from the test's settings, overrides."""
    env = {k: v for k, v in os.environ.items()}
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@contextmanager
def running(
    argvs: dict[str, list[str]], env: dict[str, str], log_dir: Path
) -> Iterator[dict[str, RadDraftProcess]]:
    """Start several raddraft processes; stop all of them afterwards."""
    procs = {
        name: RadDraftProcess(argv, env, log_dir / f"{name}.log").start()
        for name, argv in argvs.items()
    }
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    logs: dict[str, RadDraftProcess] | None = None,
) -> None:
    """Poll ``predicate`` until true; on timeout fail with the processes' log tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tails = "\n".join(f"--- {name}\n{proc.log_tail()}" for name, proc in (logs or {}).items())
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")

"""Start RadDraft's DICOM listener as a real process for a test, and talk to it with DCMTK.

Reusable by any test that needs a running listener::

    from tests.listener_process import ListenerProcess, storescu, echoscu

    with ListenerProcess(tmp_path / "listener.log").start() as listener:   # uses os.environ
        storescu(listener.port, [file1, file2])

The child is ``python -m raddraft listen --host 127.0.0.1 --port <free port>`` (the same code
as ``raddraft listen``), in its own process group so :meth:`ListenerProcess.kill9` can cut it
down like a power failure. Its settings come from the environment: inside a test that uses the
``settings`` fixture, that is the test's data directory and database.

Debian's DCMTK lives in /usr/bin; the virtualenv's ``storescu``/``storescp`` are pynetdicom's
apps of the same name, hence the absolute paths.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.conftest import free_port

DCMTK_BIN = Path(os.environ.get("RADDRAFT_TEST_DCMTK_BIN", "/usr/bin"))
# Debian's DCMTK otherwise waits ~45 ms per C-STORE for Nagle's algorithm.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

# Fast timers for tests: complete a frontal+lateral study within a second of its last image.
TEST_LISTENER_ENV = {
    "RADDRAFT_COMPLETION_POLL_SECONDS": "0.2",
    "RADDRAFT_COMPLETION_CXR_RULE_SECONDS": "1.0",
    "RADDRAFT_COMPLETION_QUIET_SECONDS": "3.0",
    "RADDRAFT_DISK_MIN_FREE_MB": "64",
    "RADDRAFT_DISK_WATERMARK_PERCENT": "99",
    "PYTHONUNBUFFERED": "1",
}


_HOST = ("--host", "127.0.0.1")


class ListenerProcess:
    """``python -m raddraft listen`` on a free loopback port, its log in ``log_path``."""

    def __init__(
        self,
        log_path: Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self.port = port or free_port()
        self.env = {**os.environ, **TEST_LISTENER_ENV, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ListenerProcess:
        """Start and wait until the log says it listens and the port accepts connections."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "raddraft",
                    "listen",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"listener exited early:\n{self.log_tail()}")
            if "listening" in self.log_text(offset) and port_open(self.port):
                return self
            time.sleep(0.05)
        self.kill9()
        raise TimeoutError(f"listener did not start:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL the process group: no cleanup runs, as in a crash."""
        if self.process is not None and self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (clean shutdown), then SIGKILL if it hangs."""
        if self.process is not None and self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_text(self, offset: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> ListenerProcess:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback ``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _dcmtk(
    tool: str,
    port: int,
    aet: str,
    aec: str,
    options: Sequence[str],
    args: Sequence[str],
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK network tool verbosely against the listener on loopback; never raises."""
    return subprocess.run(
        [
            str(DCMTK_BIN / tool),
            "-v",
            "-aet",
            aet,
            "-aec",
            aec,
            *options,
            "127.0.0.1",
            str(port),
            *args,
        ],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def storescu(
    port: int,
    files: Sequence[Path | str],
    *,
    aet: str = "STORESCU",
    aec: str = "RADDRAFT",
    options: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """DCMTK ``storescu -v`` sending ``files`` over one association; never raises on failure."""
    return _dcmtk("storescu", port, aet, aec, options, [str(f) for f in files], timeout)


def echoscu(
    port: int,
    *,
    aet: str = "ECHOSCU",
    aec: str = "RADDRAFT",
    options: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """DCMTK ``echoscu -v``; ``returncode`` 0 means the C-ECHO succeeded."""
    return _dcmtk("echoscu", port, aet, aec, options, [], timeout)


_SENDING = re.compile(r"Sending file: (?P<path>.+?)\s*$")
_RESPONSE = re.compile(r"Received Store Response(?: \((?P<status>[^)]*)\))?")


def acknowledged(storescu_output: str) -> list[str]:
    """Files whose C-STORE response storescu -v reported as Success, in sending order."""
    done: list[str] = []
    current: str | None = None
    for line in storescu_output.splitlines():
        sending = _SENDING.search(line)
        if sending:
            current = sending["path"]
            continue
        response = _RESPONSE.search(line)
        if response and current is not None:
            if (response["status"] or "").startswith("Success"):
                done.append(current)
            current = None
    return done

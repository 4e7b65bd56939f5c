"""``raddraft up``: the whole of RadDraft on one machine, until Ctrl-C.

Each part runs as its own process (listener, router, gpu worker, io worker, web), so a
crash in one is contained and the part is started again; that is also how they run in
production, only spread over machines.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import click

from raddraft.logging import kv
from raddraft.settings import get_settings

log = logging.getLogger("raddraft.up")

PARTS: dict[str, list[str]] = {
    "listener": ["listen"],
    "orders": ["orders"],
    "router": ["router"],
    "gpu-worker": ["worker", "--queues", "gpu"],
    "io-worker": ["worker", "--queues", "io", "--concurrency", "2"],
    "web": ["web"],
}


@dataclass
class Part:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "raddraft", *self.argv])
        self.started_at = time.monotonic()
        log.info("started %s", kv(part=self.name, pid=self.process.pid))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()


@click.command()
@click.option(
    "--without",
    multiple=True,
    type=click.Choice(sorted(PARTS)),
    help="Leave a part out (for example web while it is served elsewhere).",
)
def up(without: tuple[str, ...]) -> None:  # noqa: C901 (one loop supervising every child process)
    """Run listener, router, workers and web together on this machine until Ctrl-C."""
    from raddraft import migrate
    from raddraft.db import get_engine

    settings = get_settings()
    get_engine()
    migrate.upgrade(settings.database_url)
    if not settings.allowed_callers:
        log.warning("RADDRAFT_ALLOWED_CALLERS is empty: every C-STORE will be refused")
    click.echo(
        f"RadDraft up: DICOM {settings.ae_title}@{settings.dicom_host}:"
        f"{settings.dicom_port}, orders MLLP {settings.orders_host}:"
        f"{settings.orders_port}, web http://{settings.web_host}:{settings.web_port}/, "
        f"data {settings.data_dir}"
    )
    parts = [Part(name, argv) for name, argv in PARTS.items() if name not in without]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for part in parts:
        part.start()
    try:
        while not stopping:
            time.sleep(0.5)
            for part in parts:
                if part.process and part.process.poll() is not None and not stopping:
                    _restart(part)
    finally:
        for part in parts:
            part.stop()
        for part in parts:
            if part.process:
                try:
                    part.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    part.process.kill()
        click.echo("RadDraft stopped")


def _restart(part: Part) -> None:
    """Start a part that exited again, slower each time it keeps dying at once."""
    code = part.process.returncode if part.process else None
    quick = time.monotonic() - part.started_at < 10
    part.restarts = part.restarts + 1 if quick else 0
    delay = min(2**part.restarts, 60) if quick else 0
    log.error("part exited; starting it again %s", kv(part=part.name, code=code, in_seconds=delay))
    time.sleep(delay)
    part.start()

"""``raddraft listen`` and ``raddraft study complete``: the DICOM listener."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from raddraft.settings import get_settings


@click.command()
@click.option("--port", type=int, default=None, help="TCP port (default RADDRAFT_DICOM_PORT).")
@click.option("--host", default=None, help="Address to bind (default RADDRAFT_DICOM_HOST).")
def listen(port: int | None, host: str | None) -> None:
    """Run the DICOM listener (C-ECHO, C-STORE SCP) until Ctrl-C or SIGTERM.

    Received instances go to RADDRAFT_DATA_DIR/archive and the database; complete, eligible
    chest studies are queued for drafting. Only calling AE titles in RADDRAFT_ALLOWED_CALLERS
    may associate ('*' allows any; empty allows none).
    """
    from dicom_listener.scp import Listener

    settings = get_settings()
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    listener = Listener(settings).start(port=port, host=host)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        listener.stop()


@click.group()
def study() -> None:
    """Act on one received study."""


@study.command("complete")
@click.argument("uid")
def complete(uid: str) -> None:
    """Force completion of study UID's open version now (queues its draft when eligible)."""
    from dicom_listener import complete_study

    try:
        done = complete_study(uid)
    except LookupError as error:
        raise click.ClickException(str(error)) from error
    if not done:
        click.echo(f"{uid}: no open version (already complete)")
        return
    for item in done:
        verdict = "eligible" if item.eligible else f"not eligible: {item.ineligible_reason}"
        job = f", job {item.job_key}" if item.job_key else ""
        click.echo(f"{uid}: version {item.number} complete ({verdict}{job})")

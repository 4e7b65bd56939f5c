"""``raddraft orders``: the HL7 v2 MLLP order listener (ORM^O01, OMI^O23) for the RIS."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from raddraft.settings import get_settings


@click.command()
@click.option("--port", type=int, default=None, help="TCP port (default RADDRAFT_ORDERS_PORT).")
@click.option("--host", default=None, help="Address to bind (default RADDRAFT_ORDERS_HOST).")
def orders(port: int | None, host: str | None) -> None:
    """Take the RIS's orders over MLLP until Ctrl-C or SIGTERM.

    Every message is stored as received and answered AA, AE or AR (MSA-3 and ERR say why).
    Only sending facilities (MSH-4) in RADDRAFT_ORDERS_ALLOWED_FACILITIES are taken ('*' takes
    any; empty takes none).
    """
    from orders import OrderServer

    settings = get_settings()
    if port is not None or host is not None:
        settings = settings.model_copy(
            update={
                "orders_port": port if port is not None else settings.orders_port,
                "orders_host": host or settings.orders_host,
            }
        )
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = OrderServer(settings)
    server.start()
    click.echo(f"orders: MLLP on {settings.orders_host}:{server.port}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()

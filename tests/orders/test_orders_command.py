"""``raddraft orders`` as its own process: it takes an order over MLLP and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from orders.tables import Order
from raddraft.db import session_scope
from raddraft.settings import Settings
from tests.conftest import free_port
from tests.orders.test_orders import Client, orm

ROOT = Path(__file__).resolve().parents[2]


def test_the_orders_command_serves_mllp(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RADDRAFT_ORDERS_ALLOWED_FACILITIES": "GENHOSP",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "raddraft", "orders", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=ROOT,
    )
    try:
        client = None
        for _ in range(100):
            try:
                client = Client(port)
                break
            except OSError:
                time.sleep(0.1)
        assert client is not None, "the order listener did not start"
        ack = client.send(orm("CMD1", accession="ACC-CMD"))
        client.close()
        assert ack["MSA"][1:3] == ["AA", "CMD1"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    with session_scope(engine) as session:
        assert session.scalar(select(Order).where(Order.accession_number == "ACC-CMD")) is not None

"""Demo mode is said loudly in /healthz: a live demo worker or a live demo draft turns it on."""

from __future__ import annotations

import dataclasses
import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from raddraft import jobs
from raddraft.db import session_scope, utcnow
from raddraft.settings import Settings
from report_drafts.content import DEMO_WARNING
from tests.drafts.conftest import ALGORITHM
from tests.drafts.helpers import make_draft


def test_healthz_says_demo_while_a_demo_worker_lives(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "demo": False}
    with session_scope(engine) as session:
        jobs.beat(session, "gpu-1", queues="gpu", model="raddraft/tiny-qwen2.5-vl", demo=True)
    body = client.get("/healthz").json()
    assert body["demo"] is True and body["warning"] == DEMO_WARNING
    # A demo worker that went away long ago no longer counts.
    with session_scope(engine) as session:
        row = session.get(jobs.WorkerBeat, "gpu-1")
        assert row is not None
        row.last_seen = utcnow() - dt.timedelta(hours=1)
    assert client.get("/healthz").json()["demo"] is False


def test_healthz_says_demo_while_a_demo_draft_is_live(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    make_draft(engine, settings, algorithm=dataclasses.replace(ALGORITHM, demo=True))
    assert client.get("/healthz").json()["demo"] is True

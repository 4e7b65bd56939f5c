"""Fixtures for the pipeline tests: a tiny checkpoint, Orthanc, environments for a stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_URL
from tests.mllp_listener import listener  # noqa: F401
from tests.orthanc import orthanc, orthanc_factory  # noqa: F401
from tests.worker.model_server import ScriptedModelServer

REDIS_TEST_DB = 8


@pytest.fixture
def scripted_model() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture
def production_env(postgres_url: str, tmp_path: Path) -> dict[str, str]:
    """PostgreSQL and Redis, as in production (docker-compose)."""
    from raddraft import migrate

    migrate.upgrade(postgres_url)
    broker = REDIS_URL.rsplit("/", 1)[0] + f"/{REDIS_TEST_DB}"
    redis.Redis.from_url(broker).flushdb()
    return {
        "RADDRAFT_DATABASE_URL": postgres_url,
        "RADDRAFT_BROKER_URL": broker,
        "RADDRAFT_DATA_DIR": str(tmp_path / "data"),
    }


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    """The laptop default: SQLite and the filesystem broker in the data directory."""
    return {
        "RADDRAFT_DATA_DIR": str(tmp_path / "data"),
        "RADDRAFT_DATABASE_URL": "",
        "RADDRAFT_BROKER_URL": "",
    }

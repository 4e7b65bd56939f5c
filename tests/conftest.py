"""Shared fixtures: a migrated database on PostgreSQL or SQLite, and settings pointing at it.

Tests reach the real PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) that `.ci/run`
starts; each PostgreSQL test gets its own freshly created database, dropped afterwards.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from raddraft import migrate
from raddraft.db import engine_for
from raddraft.settings import Settings, get_settings
from tests.hl7_strict import BuiltMessages

POSTGRES_ADMIN_URL = os.environ.get(
    "RADDRAFT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("RADDRAFT_TEST_REDIS", "redis://127.0.0.1:6379/0")


def reload_settings() -> Settings:
    """Forget the process's cached settings and read them again (tests change the environment)."""
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(autouse=True)
def strict_hl7(monkeypatch: pytest.MonkeyPatch) -> Iterator[BuiltMessages]:
    """Every ORU^R01 a test builds in this process passes hl7apy's strict validation, or the
    test fails (tests/mllp_listener.py checks what other processes send)."""
    built = BuiltMessages()
    built.install(monkeypatch)
    yield built
    assert not built.refused, "ORU^R01 refused by strict validation:\n" + "\n\n".join(built.refused)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight Qwen2.5-VL, built once, loaded by workers like CheXOne."""
    from models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("model") / "tiny-qwen2.5-vl")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test."""
    name = f"raddraft_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'raddraft.db'}"
        migrate.upgrade(url)
        yield url
        engine_for(url).dispose()
    else:
        url = request.getfixturevalue("postgres_url")
        migrate.upgrade(url)
        yield url


@pytest.fixture
def engine(database_url: str) -> Engine:
    return engine_for(database_url)


@pytest.fixture
def settings(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings for a test: its own data directory and database, embedded broker."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("RADDRAFT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("RADDRAFT_DATABASE_URL", database_url)
    monkeypatch.delenv("RADDRAFT_BROKER_URL", raising=False)
    monkeypatch.setenv("RADDRAFT_ALLOWED_CALLERS", "STORESCU,ECHOSCU,FINDSCU,MODALITY")
    yield reload_settings()
    reload_settings()

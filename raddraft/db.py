"""The database: one declarative base for every RadDraft table, the engine and sessions.

The same tables and migrations serve PostgreSQL (production) and SQLite (the embedded default).
Times are stored in UTC; SQLite keeps them naive, so :class:`UTCDateTime` gives them back aware.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, MetaData, Select, create_engine, event, func, select
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import Pool
from sqlalchemy.types import TypeDecorator

from raddraft.settings import get_settings

# Stable constraint names, so Alembic's autogenerate and SQLite batch migrations agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    """A timestamp as the API and pages write it (ISO 8601), or None."""
    return value.isoformat() if value is not None else None


def count_rows(session: Session, query: Select[Any]) -> int:
    """How many rows ``query`` gives, counted by the database."""
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the listener write while the web app and workers read; busy_timeout waits out
    # the other processes' short write locks instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets the pragmas that make it safe for several processes."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    _ALL_ENGINES.add(engine)
    return engine


#: The engines of this process, newest use last; a few URLs at most (tests make more).
_ENGINES: OrderedDict[str, Engine] = OrderedDict()
_ENGINES_LOCK = threading.Lock()
_MAX_ENGINES = 8
#: Every engine still alive in this process, cached or not: a forked child resets them all.
_ALL_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
#: The pools a forked child inherited, held so that the child never closes their connections:
#: an explicit close would end the parent's PostgreSQL session, and closing an inherited SQLite
#: file descriptor drops the child's own POSIX locks on that file (SQLite, "How To Corrupt An
#: SQLite Database File" 2.2).
_INHERITED_POOLS: list[Pool] = []


def engine_for(url: str) -> Engine:
    """One engine per database URL per process (a forked child gets fresh connections)."""
    evicted = []
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = _ENGINES[url] = make_engine(url)
            while len(_ENGINES) > _MAX_ENGINES:
                evicted.append(_ENGINES.popitem(last=False)[1])
        _ENGINES.move_to_end(url)
    for old in evicted:  # closing connections may wait on the network: not under the lock
        old.dispose()
    return engine


def _forget_inherited_connections() -> None:
    """In a forked child (Celery's prefork pool), leave the parent's pooled connections alone.

    A child that used one would share its socket with the parent: the two processes' protocol
    messages interleave, a query reads the other's answer, or the server drops the session
    ("server closed the connection unexpectedly") between a send and its record. SQLAlchemy's
    "Using Connection Pools with Multiprocessing or os.fork()": ``dispose(close=False)`` gives
    the child a new, empty pool without closing what the parent still uses. (A session the
    forking thread held open is not reset; Celery forks from its main loop, which holds none.)
    """
    engines = list(_ALL_ENGINES)
    _INHERITED_POOLS.extend(engine.pool for engine in engines)
    for engine in engines:
        engine.dispose(close=False)
    # The lock may have been held by another thread of the parent when it forked.
    global _ENGINES_LOCK
    _ENGINES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited_connections)


def get_engine() -> Engine:
    """The engine of the configured database (creating the data folder for SQLite)."""
    settings = get_settings()
    if settings.database_url.startswith("sqlite:///"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return engine_for(settings.database_url)


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=engine or get_engine(), expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

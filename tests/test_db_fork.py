"""A forked child (Celery's prefork io workers) never uses its parent's pooled connections.

The io worker's parent process writes its heartbeat through the engine before Celery forks the
pool; a child that took the parent's pooled connection would share its socket, and the two
processes' queries would interleave on one server session.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from raddraft.db import engine_for, make_engine, session_scope


def _forked(read: Callable[[], str]) -> str:
    """What ``read`` gives in a forked child of this process."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            os.write(write_end, read().encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)  # no cleanup of the parent's objects in the child
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


def test_a_forked_child_opens_its_own_postgresql_session(postgres_url: str) -> None:
    def backend_pid() -> str:
        with session_scope(engine_for(postgres_url)) as session:
            return str(session.scalar(text("SELECT pg_backend_pid()")))

    parent = backend_pid()  # its connection now waits in the parent's pool
    child = _forked(backend_pid)

    assert child and child != parent
    # The parent's session was neither used nor ended by the child.
    assert backend_pid() == parent


def test_a_forked_child_opens_its_own_sqlite_connection(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fork.db'}"

    def connection_id() -> str:
        with engine_for(url).connect() as conn:
            conn.execute(text("SELECT 1"))
            return str(id(conn.connection.dbapi_connection))

    parent = connection_id()
    child = _forked(connection_id)

    assert child and child != parent
    assert connection_id() == parent


def test_an_engine_made_outside_the_cache_is_reset_too(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'own.db'}")  # as the listener's tests pass one

    def connection_id() -> str:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            return str(id(conn.connection.dbapi_connection))

    parent = connection_id()
    assert _forked(connection_id) != parent
    assert connection_id() == parent

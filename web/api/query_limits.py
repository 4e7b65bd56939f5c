"""A time limit on one request's database work (QIDO-RS and FHIR search).

A search runs in FastAPI's thread pool (its endpoint is a plain ``def``), so the event loop
and the health check keep answering while it works; this bounds how long it may keep a
connection and a thread. PostgreSQL stops the statement itself (``SET LOCAL
statement_timeout``, for the request's transaction only); SQLite is interrupted by a progress
handler that checks the deadline every few thousand virtual machine steps. Either way the
caller gets :class:`QueryTimeout`, which the routes answer 503 with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

#: SQLSTATE query_canceled (PostgreSQL Appendix A), what statement_timeout raises.
QUERY_CANCELED = "57014"
#: How many SQLite VM instructions pass between two looks at the clock.
SQLITE_STEPS = 10_000


class QueryTimeoutError(Exception):
    """The request's database work ran past ``RADDRAFT_QUERY_TIMEOUT_SECONDS``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the search ran longer than {seconds:g} s (RADDRAFT_QUERY_TIMEOUT_SECONDS) and was "
            "stopped; narrow it (more keys, fewer wildcards) or ask for a smaller page"
        )
        self.seconds = seconds


def _timed_out(error: OperationalError) -> bool:
    orig = error.orig
    if getattr(orig, "sqlstate", None) == QUERY_CANCELED:
        return True
    return "interrupted" in str(orig).lower()


@contextmanager
def time_limit(session: Session, seconds: float) -> Iterator[None]:
    """Stop the session's statements run inside after ``seconds`` in all (SQLite) or each
    (PostgreSQL); :class:`QueryTimeoutError` then."""
    dialect = session.get_bind().dialect.name
    try:
        if dialect == "postgresql":
            # SET takes no bind parameter; the value is a number we computed.
            session.execute(text(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}"))
            yield
        elif dialect == "sqlite":
            with _sqlite_deadline(session, seconds):
                yield
        else:
            yield
    except OperationalError as error:
        if not _timed_out(error):
            raise
        session.rollback()
        raise QueryTimeoutError(seconds) from error


@contextmanager
def _sqlite_deadline(session: Session, seconds: float) -> Iterator[None]:
    raw: Any = session.connection().connection.dbapi_connection
    deadline = time.monotonic() + seconds

    def past_deadline() -> int:
        return 1 if time.monotonic() > deadline else 0

    raw.set_progress_handler(past_deadline, SQLITE_STEPS)
    try:
        yield
    finally:
        raw.set_progress_handler(None, 0)

"""Counts kept as rows change, so the queue page and ``/metrics`` never recount the archive.

Database triggers (migration 0011) add one row to ``counter_deltas`` for every change that
moves a figure: a report or job changing state, a send attempt, an ingest event, a report
version written. Inserting a delta takes no lock another transaction waits on (no hot counter
row is updated by the writers), and the delta commits or rolls back with the change itself,
so the figures are exact. A reader adds the folded totals in ``counters`` to the deltas not yet
folded, in one statement (one snapshot); :func:`fold` moves the deltas into ``counters``
(any process may, one at a time), which keeps what a read adds up bounded by the work done
since the last fold, not by the size of the archive.

Names and labels (``|`` between label values, in the order given):

- ``reports`` (state): reports by lifecycle state (gauge);
- ``jobs`` (queue|state|task): jobs by queue, state and task (gauge);
- ``job_duration`` (task|le): finished jobs by the smallest duration bucket they fit, and
  ``job_duration_sum`` (task): their summed run time (a histogram, cumulated on reading);
- ``sent_objects`` (kind|state) and ``sent_attempts`` (kind): outbound objects and attempts;
- ``ingest_events`` (kind) and ``ingest_bytes`` (): listener events and bytes stored;
- ``report_versions`` (action) and ``signed_without_edit`` (): versions written;
- ``fhir_reports`` (status) and ``fhir_studies`` (): what FHIR shows, added by
  :mod:`report_drafts.fhir_view` with :func:`add` where a version is written (what it counts
  is decided there, not by a row's columns alone), rebuilt by migration 0013.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import (
    BigInteger,
    Float,
    String,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from raddraft.db import Base

#: Deltas one fold moves at most: a fold in a request stays short even after a long silence.
FOLD_BATCH = 50_000
#: Any number, the same in every process: the PostgreSQL advisory lock one folder holds.
_FOLD_LOCK = 0x5241_4444  # "RADD"

Key = tuple[str, str]


class Counter(Base):
    """A folded total: one figure by name and labels."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[str] = mapped_column(String(400), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class CounterDelta(Base):
    """A change to a figure not yet folded into :class:`Counter` (written by triggers)."""

    __tablename__ = "counter_deltas"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(sqlite.INTEGER(), "sqlite"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64))
    labels: Mapped[str] = mapped_column(String(400))
    delta: Mapped[float] = mapped_column(Float)


def add(session: Session, name: str, labels: str, delta: float) -> None:
    """A change to a figure, in the caller's transaction (what the triggers write)."""
    session.execute(insert(CounterDelta).values(name=name, labels=labels, delta=delta))


def read(session: Session, names: tuple[str, ...]) -> dict[Key, float]:
    """The totals of ``names``: folded values plus the deltas not folded yet, one snapshot."""
    folded = select(Counter.name, Counter.labels, Counter.value.label("v")).where(
        Counter.name.in_(names)
    )
    pending = select(CounterDelta.name, CounterDelta.labels, CounterDelta.delta.label("v")).where(
        CounterDelta.name.in_(names)
    )
    both = folded.union_all(pending).subquery()
    rows = session.execute(
        select(both.c.name, both.c.labels, func.sum(both.c.v)).group_by(both.c.name, both.c.labels)
    )
    return {(str(n), str(labels)): float(v or 0.0) for n, labels, v in rows}


def by_labels(totals: dict[Key, float], name: str) -> dict[tuple[str, ...], float]:
    """The totals of one name, keyed by its label values."""
    return {tuple(labels.split("|")): v for (n, labels), v in totals.items() if n == name}


def fold(session: Session, batch: int = FOLD_BATCH) -> int:
    """Move up to ``batch`` deltas into the totals (in the caller's transaction); returns how
    many. On PostgreSQL only one session folds at a time; the others return 0 at once."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql" and not session.scalar(
        text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _FOLD_LOCK}
    ):
        return 0
    oldest = select(CounterDelta.id).order_by(CounterDelta.id).limit(batch).scalar_subquery()
    moved = session.execute(
        delete(CounterDelta)
        .where(CounterDelta.id.in_(oldest))
        .returning(CounterDelta.name, CounterDelta.labels, CounterDelta.delta)
    ).all()
    sums: dict[Key, float] = defaultdict(float)
    for name, labels, delta in moved:
        sums[(name, labels)] += float(delta)
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # Sorted: two folders (SQLite has no advisory lock) take the rows in one order.
    for (name, labels), value in sorted(sums.items()):
        statement = upsert(Counter).values(name=name, labels=labels, value=value)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["name", "labels"],
                set_={"value": Counter.value + literal_column("excluded.value")},
            )
        )
    return len(moved)


def pending(session: Session) -> int:
    """Deltas not folded yet (the work since the last fold)."""
    return int(session.scalar(select(func.count()).select_from(CounterDelta)) or 0)

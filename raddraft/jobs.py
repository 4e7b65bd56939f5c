"""The durable job table: RadDraft's queue of record.

Every piece of background work (draft a study version, export an SR, send an HL7 message) is a
row here before it is a broker message. The row's ``key`` makes enqueueing idempotent: the
listener may complete the same study version twice across a restart and still one job exists.
The broker only carries job ids to workers; a worker *claims* the row before it works, so a
duplicated or re-delivered message never runs the same job twice at once, and a job whose
worker died (its lease ran out) goes back to ``pending`` and is sent again. That recovery is the
same on Redis and on the embedded filesystem broker, which has no re-delivery of its own.

States: pending -> dispatched -> running -> done | pending (retry) | dead (dead letter).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import Index, String, Text, or_, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from raddraft.db import Base, utcnow


class JobState(enum.StrEnum):
    pending = "pending"
    dispatched = "dispatched"
    running = "running"
    done = "done"
    dead = "dead"


class Priority(enum.IntEnum):
    """Lower runs first. Mapped from RequestedProcedurePriority (PS3.3 C.4.11) or HL7 ORC-7."""

    stat = 0
    high = 1
    routine = 2
    low = 3


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    task: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(32), default="gpu")
    priority: Mapped[int] = mapped_column(default=Priority.routine)
    args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default=JobState.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=5)
    not_before: Mapped[dt.datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[dt.datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (Index("ix_jobs_state_priority", "state", "priority", "created_at"),)


def enqueue(
    session: Session,
    *,
    task: str,
    key: str,
    args: dict[str, Any],
    queue: str = "gpu",
    priority: int = Priority.routine,
    max_attempts: int = 5,
) -> Job:
    """Add a job unless one with ``key`` exists; return the job either way.

    Runs inside the caller's transaction, so the job appears exactly when the caller's own
    change (a study version completing, a draft being signed) commits.
    """
    existing = session.scalar(select(Job).where(Job.key == key))
    if existing is not None:
        return existing
    job = Job(
        key=key,
        task=task,
        args=args,
        queue=queue,
        priority=int(priority),
        max_attempts=max_attempts,
    )
    session.add(job)
    session.flush()
    return job


def claim(session: Session, job_id: int, worker: str, lease: dt.timedelta) -> bool:
    """Take the job for ``worker``; False when it is done, dead or held by a live worker."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.state.in_([JobState.pending, JobState.dispatched]),
                (Job.state == JobState.running) & (Job.lease_until < now),
            ),
        )
        .values(
            state=JobState.running,
            worker=worker,
            lease_until=now + lease,
            started_at=now,
            attempts=Job.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def heartbeat(session: Session, job_id: int, worker: str, lease: dt.timedelta) -> None:
    """Extend a running job's lease while its worker is alive."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.state == JobState.running)
        .values(lease_until=utcnow() + lease)
    )
    session.commit()


def finish(session: Session, job_id: int, timings: dict[str, Any] | None = None) -> None:
    job = session.get(Job, job_id)
    if job is None:
        return
    job.state = JobState.done
    job.finished_at = utcnow()
    job.lease_until = None
    job.last_error = None
    if timings:
        job.timings = {**job.timings, **timings}
    session.commit()


def fail(
    session: Session,
    job_id: int,
    error: str,
    *,
    transient: bool,
    backoff: dt.timedelta,
) -> JobState:
    """Record a failure: retry later (transient, attempts left) or dead-letter the job."""
    job = session.get(Job, job_id)
    if job is None:
        return JobState.dead
    job.last_error = error[:4000]
    job.lease_until = None
    if transient and job.attempts < job.max_attempts:
        job.state = JobState.pending
        job.not_before = utcnow() + backoff * (2 ** max(job.attempts - 1, 0))
    else:
        job.state = JobState.dead
        job.finished_at = utcnow()
    session.commit()
    return JobState(job.state)


def defer(session: Session, job_id: int, reason: str, *, delay: dt.timedelta) -> None:
    """Put a running job back for later without spending an attempt (it waited, not failed)."""
    job = session.get(Job, job_id)
    if job is None:
        return
    job.state = JobState.pending
    job.attempts = max(job.attempts - 1, 0)
    job.lease_until = None
    job.worker = None
    job.not_before = utcnow() + delay
    job.last_error = f"waiting: {reason}"[:4000]
    session.commit()


def retry(session: Session, job_id: int) -> Job:
    """Give a dead or failed job a fresh set of attempts (an administrator's action)."""
    job = session.get(Job, job_id)
    if job is None:
        raise LookupError(f"no job {job_id}")
    if job.state not in (JobState.dead, JobState.pending):
        raise ValueError(f"job {job_id} is {job.state}, not dead")
    job.state = JobState.pending
    job.attempts = 0
    job.not_before = utcnow()
    job.finished_at = None
    session.commit()
    return job


def recover_expired(session: Session, stale_after: dt.timedelta) -> int:
    """Put back jobs whose worker died (lease over) or whose broker message was lost."""
    now = utcnow()
    expired = session.execute(
        update(Job)
        .where(Job.state == JobState.running, Job.lease_until < now)
        .values(state=JobState.pending, worker=None, lease_until=None)
    ).rowcount  # type: ignore[attr-defined]
    lost = session.execute(
        update(Job)
        .where(Job.state == JobState.dispatched, Job.dispatched_at < now - stale_after)
        .values(state=JobState.pending)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return int(expired) + int(lost)


def due(session: Session, queue: str, limit: int) -> list[Job]:
    """Pending jobs of ``queue`` ready to send, most urgent and oldest first."""
    if limit <= 0:
        return []
    return list(
        session.scalars(
            select(Job)
            .where(Job.state == JobState.pending, Job.queue == queue, Job.not_before <= utcnow())
            .order_by(Job.priority, Job.created_at, Job.id)
            .limit(limit)
        )
    )


def outstanding(session: Session, queue: str) -> int:
    """Jobs sent to the broker but not yet started: what the queue holds right now."""
    rows = session.scalars(
        select(Job.id).where(Job.queue == queue, Job.state == JobState.dispatched)
    )
    return len(list(rows))


def mark_dispatched(session: Session, job_ids: list[int]) -> None:
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.state == JobState.pending)
            .values(state=JobState.dispatched, dispatched_at=utcnow())
        )
        session.commit()


class WorkerBeat(Base):
    """A live worker process: what it serves and when it last spoke (the admin page's list)."""

    __tablename__ = "worker_beats"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # celery hostname
    queues: Mapped[str] = mapped_column(String(100), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    demo: Mapped[bool] = mapped_column(default=False)
    pid: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    current_job: Mapped[int | None] = mapped_column(default=None)


def beat(session: Session, name: str, **fields: Any) -> None:
    """Record that worker ``name`` is alive (upsert on the primary key)."""
    row = session.get(WorkerBeat, name)
    if row is None:
        row = WorkerBeat(name=name)
        session.add(row)
    for key, value in fields.items():
        setattr(row, key, value)
    row.last_seen = utcnow()
    session.commit()

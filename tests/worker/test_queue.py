"""The job table, the router and real Celery worker processes, on both brokers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.engine import Engine

from raddraft import jobs
from raddraft.db import session_scope
from raddraft.settings import Settings
from tests.conftest import REDIS_URL
from tests.processes import raddraft_env, running, wait_for

REDIS_TEST_DB = 7


@pytest.fixture(params=["filesystem", "redis"])
def broker_env(request: pytest.FixtureRequest, settings: Settings) -> Iterator[dict[str, str]]:
    env = raddraft_env(RADDRAFT_JOB_LEASE_SECONDS="4", RADDRAFT_ROUTER_STALE_SECONDS="5")
    if request.param == "redis":
        url = REDIS_URL.rsplit("/", 1)[0] + f"/{REDIS_TEST_DB}"
        redis.Redis.from_url(url).flushdb()
        env["RADDRAFT_BROKER_URL"] = url
    yield env


def _state(engine: Engine, job_id: int) -> jobs.Job:
    with session_scope(engine) as session:
        job = session.get(jobs.Job, job_id)
        assert job is not None
        return job


def test_job_runs_once_through_a_real_worker(
    broker_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    with session_scope(engine) as session:
        job_id = jobs.enqueue(
            session, task="raddraft.ping", key="ping:a", args={"echo": "x"}, queue="io"
        ).id
        # The same key again is the same job: enqueueing is idempotent.
        assert (
            jobs.enqueue(session, task="raddraft.ping", key="ping:a", args={}, queue="io").id
            == job_id
        )
    argvs = {"worker": ["worker", "-Q", "io", "-c", "1"], "router": ["router"]}
    with running(argvs, broker_env, tmp_path) as procs:
        wait_for(
            lambda: _state(engine, job_id).state == jobs.JobState.done,
            60,
            "the ping job to finish",
            procs,
        )
    job = _state(engine, job_id)
    assert job.attempts == 1
    assert job.timings["echo"] == "x"


def test_urgent_job_overtakes_routine_ones(
    broker_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    with session_scope(engine) as session:
        routine = [
            jobs.enqueue(session, task="raddraft.ping", key=f"r{i}", args={}, queue="gpu").id
            for i in range(6)
        ]
        stat = jobs.enqueue(
            session,
            task="raddraft.ping",
            key="stat",
            args={},
            queue="gpu",
            priority=jobs.Priority.stat,
        ).id
    # A worker on the gpu queue without loading a model: ping needs none.
    argvs = {"worker": ["worker", "-Q", "gpu", "--no-model"], "router": ["router"]}
    with running(argvs, broker_env, tmp_path) as procs:
        wait_for(
            lambda: all(_state(engine, i).state == jobs.JobState.done for i in [*routine, stat]),
            90,
            "all jobs to finish",
            procs,
        )
    with session_scope(engine) as session:
        order = list(session.scalars(select(jobs.Job.id).order_by(jobs.Job.started_at)))
    assert order[0] == stat, f"STAT job ran at position {order.index(stat)}: {order}"


def test_worker_death_puts_the_job_back(engine: Engine, settings: Settings) -> None:
    """A running job whose lease ran out is pending again; a live lease is left alone."""
    import datetime as dt

    with session_scope(engine) as session:
        dead = jobs.enqueue(session, task="raddraft.ping", key="dead", args={}, queue="io").id
        live = jobs.enqueue(session, task="raddraft.ping", key="live", args={}, queue="io").id
        assert jobs.claim(session, dead, "w1", dt.timedelta(seconds=-1))
        assert jobs.claim(session, live, "w2", dt.timedelta(seconds=60))
        # A second claim of a live job fails: duplicates of a message do not run twice.
        assert not jobs.claim(session, live, "w3", dt.timedelta(seconds=60))
        assert jobs.recover_expired(session, dt.timedelta(seconds=60)) == 1
    assert _state(engine, dead).state == jobs.JobState.pending
    assert _state(engine, live).state == jobs.JobState.running


def test_failures_retry_with_backoff_then_dead_letter(engine: Engine, settings: Settings) -> None:
    import datetime as dt

    with session_scope(engine) as session:
        job_id = jobs.enqueue(
            session, task="raddraft.ping", key="f", args={}, queue="io", max_attempts=2
        ).id
        assert jobs.claim(session, job_id, "w", dt.timedelta(seconds=30))
        state = jobs.fail(
            session, job_id, "peer down", transient=True, backoff=dt.timedelta(seconds=10)
        )
        assert state == jobs.JobState.pending
        assert _state(engine, job_id).not_before > jobs.utcnow() + dt.timedelta(seconds=5)
        assert jobs.due(session, "io", 10) == []  # not before the backoff
        assert jobs.claim(session, job_id, "w", dt.timedelta(seconds=30))
        assert (
            jobs.fail(
                session, job_id, "still down", transient=True, backoff=dt.timedelta(seconds=10)
            )
            == jobs.JobState.dead
        )
        retried = jobs.retry(session, job_id)
        assert retried.state == jobs.JobState.pending and retried.attempts == 0
        assert jobs.claim(session, job_id, "w", dt.timedelta(seconds=30))
        assert (
            jobs.fail(
                session, job_id, "rejected", transient=False, backoff=dt.timedelta(seconds=10)
            )
            == jobs.JobState.dead
        )

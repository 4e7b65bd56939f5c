"""Running one job row inside a Celery task: claim, keep the lease alive, record the outcome."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from raddraft import jobs
from raddraft.db import session_scope
from raddraft.logging import kv
from raddraft.settings import get_settings
from worker.errors import PermanentError

log = logging.getLogger(__name__)

# A handler gets the job's id and arguments and returns timings (seconds by stage) to record.
Handler = Callable[[int, dict[str, Any]], dict[str, Any] | None]

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def _lease_kept(job_id: int, lease: dt.timedelta) -> Iterator[None]:
    """Extend the job's lease in the background while the handler runs."""
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(lease.total_seconds() / 3):
            try:
                with session_scope() as session:
                    jobs.heartbeat(session, job_id, WORKER_NAME, lease)
            except Exception:
                log.exception("lease heartbeat failed %s", kv(job=job_id))

    thread = threading.Thread(target=keep, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_job(
    job_id: int, handler: Handler, on_dead: Callable[[dict[str, Any], str], None] | None = None
) -> str:
    """Run ``handler`` for job ``job_id`` unless another worker has it or it is finished.

    Returns what happened: ``skipped`` (not claimed), ``done``, ``retry`` or ``dead``.
    ``on_dead`` gets the job's arguments and the error when the job is dead-lettered.
    """
    settings = get_settings()
    lease = dt.timedelta(seconds=settings.job_lease_seconds)
    with session_scope() as session:
        if not jobs.claim(session, job_id, WORKER_NAME, lease):
            log.info("job not claimed (done, dead or held elsewhere) %s", kv(job=job_id))
            return "skipped"
        job = session.get(jobs.Job, job_id)
        assert job is not None
        args = dict(job.args)
        waited = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
    started = time.monotonic()
    try:
        with _lease_kept(job_id, lease):
            timings = handler(job_id, args) or {}
    except Exception as error:
        outcome = _failed(job_id, error, transient=not isinstance(error, PermanentError))
        if outcome == "dead" and on_dead is not None:
            on_dead(args, f"{type(error).__name__}: {error}")
        return outcome
    timings = {
        "queued_s": round(waited, 4),
        "run_s": round(time.monotonic() - started, 4),
        **timings,
    }
    with session_scope() as session:
        jobs.finish(session, job_id, timings)
    log.info(
        "job done %s",
        kv(job=job_id, **{k: v for k, v in timings.items() if isinstance(v, int | float)}),
    )
    return "done"


def _failed(job_id: int, error: BaseException, *, transient: bool) -> str:
    settings = get_settings()
    message = f"{type(error).__name__}: {error}"
    with session_scope() as session:
        state = jobs.fail(
            session,
            job_id,
            message,
            transient=transient,
            backoff=dt.timedelta(seconds=settings.job_backoff_seconds),
        )
    level = logging.WARNING if state == jobs.JobState.pending else logging.ERROR
    log.log(
        level,
        "job failed %s",
        kv(job=job_id, next=str(state), error=message),
        exc_info=not transient,
    )
    return "retry" if state == jobs.JobState.pending else "dead"

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
from typing import Any, TypeVar

from raddraft import job_contract, jobs
from raddraft.db import session_scope
from raddraft.logging import kv
from raddraft.settings import get_settings
from worker.errors import NotYet, PermanentError

log = logging.getLogger(__name__)

Args = TypeVar("Args", bound=job_contract.JobArgs)
# A handler gets the job's id and typed arguments and returns timings (seconds by stage).
Handler = Callable[[int, Args], dict[str, Any] | None]

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
    job_id: int,
    kind: type[Args],
    handler: Handler[Args],
    on_dead: Callable[[Args, str], None] | None = None,
) -> str:
    """Run ``handler`` for job ``job_id`` unless another worker has it or it is finished.

    The job row's arguments are read as ``kind`` (a dataclass of the job contract); a row
    that does not fit is dead-lettered, never guessed at. Returns what happened: ``skipped``
    (not claimed), ``done``, ``waiting`` (deferred, no attempt spent), ``retry`` or ``dead``.
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
        task, raw_args = job.task, dict(job.args)
        waited = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
    try:
        args = _arguments(kind, task, raw_args)
    except PermanentError as error:
        return _failed(job_id, error, transient=False)
    started = time.monotonic()
    try:
        with _lease_kept(job_id, lease):
            timings = handler(job_id, args) or {}
    except NotYet as waiting:
        with session_scope() as session:
            jobs.defer(
                session,
                job_id,
                str(waiting),
                delay=dt.timedelta(seconds=waiting.delay_seconds),
            )
        log.info("job waits %s", kv(job=job_id, reason=str(waiting)))
        return "waiting"
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


def _arguments(kind: type[Args], task: str, raw: dict[str, Any]) -> Args:
    """The row's arguments as ``kind``; :class:`PermanentError` when they are not that."""
    try:
        args = job_contract.arguments_of(task, raw)
    except ValueError as error:
        raise PermanentError(str(error)) from error
    if not isinstance(args, kind):
        raise PermanentError(f"task {task} is not a {kind.__name__} job")
    return args


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

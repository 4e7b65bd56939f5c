"""The router: sends due jobs from the job table to the broker, most urgent first.

Only a few jobs per queue are outstanding on the broker at a time, so the job table (ordered by
priority, then age) decides what runs next on any broker: a STAT study queued after a hundred
routine ones still runs next. The same loop puts back jobs whose worker died (lease over) and
jobs whose message the broker lost, and runs the retention purge on its schedule
(:mod:`worker.retention`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from celery import Celery
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import orders
import report_drafts
from raddraft import jobs
from raddraft.db import session_scope, utcnow
from raddraft.job_contract import QUEUES, Queue
from raddraft.logging import kv
from raddraft.settings import Settings
from worker import retention

log = logging.getLogger(__name__)


def outstanding_limit(session: Session, settings: Settings, queue: str) -> int:
    """How many jobs a queue may hold on the broker.

    ``gpu``: as many per live worker as it drafts at once (``studies_in_flight``) and no more,
    so the job table's priority order decides what runs next (a broker may reorder messages
    sent together; drafts take seconds, so a lookahead would gain nothing). ``io``: a few per
    worker, order matters less there.
    """
    since = utcnow() - dt.timedelta(seconds=settings.job_lease_seconds)
    live = session.scalars(
        select(jobs.WorkerBeat.queues).where(jobs.WorkerBeat.last_seen >= since)
    ).all()
    serving = max(sum(1 for queues in live if queue in queues.split(",")), 1)
    return serving * settings.studies_in_flight if queue == Queue.gpu else 4 * serving


def route_once(app: Celery, settings: Settings, engine: Engine | None = None) -> int:
    """One pass: recover expired jobs, then send what is due. Returns the number sent."""
    sent = 0
    with session_scope(engine) as session:
        recovered = jobs.recover_expired(
            session, dt.timedelta(seconds=settings.router_stale_seconds)
        )
        if recovered:
            log.warning("put back jobs whose worker or message was lost %s", kv(count=recovered))
        # An order that came before its images: its priority, not the header's, decides.
        raised = orders.raise_waiting_drafts(session)
        if raised:
            log.info("draft jobs raised to their order's priority %s", kv(count=raised))
        for queue in QUEUES:
            room = outstanding_limit(session, settings, queue) - jobs.outstanding(session, queue)
            due = jobs.due(session, queue, room)
            for job in due:
                app.send_task(job.task, args=[job.id], queue=str(queue))
            jobs.mark_dispatched(session, [job.id for job in due])
            sent += len(due)
            for job in due:
                log.info("dispatched %s", kv(job=job.id, task=job.task, priority=job.priority))
    return sent


def escalate_critical(settings: Settings, engine: Engine | None = None) -> int:
    """Escalate critical notices nobody acknowledged in time (report_drafts.notifications)."""
    if not settings.critical_escalation_contacts or not settings.critical_smtp:
        return 0
    with session_scope(engine) as session:
        made = report_drafts.escalate_unacknowledged(session, settings)
    if made:
        log.warning("critical notices escalated %s", kv(count=len(made)))
    return len(made)


def run(app: Celery, settings: Settings, stop: threading.Event) -> None:
    """Dispatch until ``stop`` is set; database or broker trouble is logged and retried."""
    log.info("router started %s", kv(broker=app.conf.broker_url))
    schedule = retention.PurgeSchedule(settings)
    while not stop.is_set():
        try:
            busy = route_once(app, settings) > 0
        except Exception:
            log.exception("dispatch pass failed; retrying")
            busy = False
        try:
            escalate_critical(settings)
        except Exception:
            log.exception("critical-notice escalation pass failed; retrying")
        try:
            schedule.purge_if_due()
        except Exception:
            # The next interval tries again; a purge that failed took nothing it had not
            # recorded (rows go before files, in one transaction per study).
            log.exception("retention purge failed")
        if not busy:
            stop.wait(settings.router_poll_seconds)
    log.info("router stopped")

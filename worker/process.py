"""A worker process: load what its queues need once, announce itself, run Celery."""

from __future__ import annotations

import logging
import os
import threading
import warnings

from celery.signals import worker_process_shutdown

from raddraft import atna, jobs
from raddraft.db import session_scope
from raddraft.job_contract import Queue
from raddraft.logging import kv
from raddraft.settings import Settings
from worker import pipeline
from worker.app import broker_options, make_app
from worker.runner import WORKER_NAME

log = logging.getLogger(__name__)


def _announce(
    queues: list[str], model: str, demo: bool, stop: threading.Event, every: float
) -> None:
    while True:
        try:
            with session_scope() as session:
                jobs.beat(
                    session,
                    WORKER_NAME,
                    queues=",".join(queues),
                    model=model,
                    demo=demo,
                    pid=os.getpid(),
                )
        except Exception:
            log.exception("worker heartbeat failed")
        if stop.wait(every):
            return


def _quiet_start(*, model_stack: bool) -> None:
    """No progress bars in a service's log (model download and load), and no Celery warning
    about running as root, which containers do by design (the image chooses the user)."""
    if model_stack:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore", message=r"You're running the worker with superuser")


def worker_pool(settings: Settings, queues: list[str], concurrency: int) -> tuple[str, int]:
    """Celery's pool and its size for these queues.

    The gpu queue runs in this very process, where the model was loaded: one study at a time
    (solo pool), or ``studies_in_flight`` at once in threads sharing the one loaded model. The
    OpenAI-compatible backend (vLLM) serves those readings concurrently, the server batching
    their sequences; the transformers backend's engine (models/_engine.py) batches their turns
    into shared forward passes. io workers fork.
    """
    if Queue.gpu not in queues:
        return "prefork", concurrency
    if settings.studies_in_flight <= 1:
        return "solo", 1
    return "threads", settings.studies_in_flight


def _flush_audit(**_: object) -> None:
    """A prefork child ends with ``os._exit`` (no atexit): its queued ATNA records go first."""
    atna.flush_at_exit()


def run_worker(
    settings: Settings, queues: list[str], concurrency: int, *, load_model: bool = True
) -> None:
    """Serve ``queues`` until stopped. A ``gpu`` worker loads the model first, once."""
    model, demo = "", False
    _quiet_start(model_stack=Queue.gpu in queues and load_model)
    if Queue.gpu in queues and load_model:
        info = pipeline.load_reader(settings)
        model, demo = info.model_id, info.demo
        if demo:
            log.warning("DEMO MODEL: random weights, drafts are not clinical %s", kv(model=model))
    stop = threading.Event()
    beat = threading.Thread(
        target=_announce,
        args=(queues, model, demo, stop, max(settings.job_lease_seconds / 4, 1)),
        name="worker-beat",
        daemon=True,
    )
    beat.start()
    app = make_app(settings)
    worker_process_shutdown.connect(_flush_audit, weak=False)
    pool, concurrency = worker_pool(settings, queues, concurrency)
    log.info(
        "worker serving %s",
        kv(
            queues=",".join(queues),
            model=model or "none (no gpu queue)",
            demo=demo,
            pool=pool,
            concurrency=concurrency,
            broker=broker_options(settings)[0],
        ),
    )
    argv = [
        # No banner (a global option, before the sub-command): the line above says it all.
        "--quiet",
        "worker",
        "-Q",
        ",".join(queues),
        "--pool",
        pool,
        "-n",
        WORKER_NAME,
        "--loglevel",
        settings.log_level,
        "--without-mingle",
        "--without-gossip",
    ]
    if pool != "solo":
        argv += ["--concurrency", str(concurrency)]
    try:
        app.worker_main(argv)
    finally:
        stop.set()

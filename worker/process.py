"""A worker process: load what its queues need once, announce itself, run Celery."""

from __future__ import annotations

import logging
import os
import threading
import warnings

from raddraft import jobs
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

        hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"You're running the worker with superuser")


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
    # The gpu queue runs in this very process (solo pool), where the model was loaded; io
    # workers may fork several children.
    pool = "solo" if Queue.gpu in queues else "prefork"
    log.info(
        "worker serving %s",
        kv(
            queues=",".join(queues),
            model=model or "none (no gpu queue)",
            demo=demo,
            pool=pool,
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

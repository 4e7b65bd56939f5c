"""The Celery application: broker from settings, two queues, late acknowledgement.

Queues (:class:`raddraft.job_contract.Queue`): ``gpu`` runs drafting (one task at a time per GPU
worker process, the model loaded once at worker start); ``io`` runs exports and RIS messages.
Producers never call Celery: they write job rows (:mod:`raddraft.job_contract`) and
:mod:`worker.router` sends them here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from kombu.entity import Queue as KombuQueue

from raddraft.job_contract import QUEUES, Queue
from raddraft.settings import Settings, get_settings


def _filesystem_options(broker_url: str) -> dict[str, Any]:
    """kombu's filesystem transport keeps messages as files; one folder serves in and out."""
    folder = Path(broker_url.removeprefix("filesystem://") or ".")
    for sub in ("queue", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "polling_interval": 0.05,
    }


def broker_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL Celery should use and its transport options."""
    url = settings.broker_url
    if url.startswith("filesystem://"):
        return "filesystem://", _filesystem_options(url)
    # Redis re-delivers an unacknowledged message after the visibility timeout; the job
    # table's lease recovers sooner, so this only has to outlast the longest draft.
    return url, {"visibility_timeout": 4 * 3600}


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    url, transport_options = broker_options(settings)
    app = Celery("raddraft", broker=url, set_as_current=True)
    app.conf.update(
        broker_transport_options=transport_options,
        # Our subclass of kombu's filesystem transport, which writes message files atomically.
        broker_transport="worker.fs_transport:Transport" if url == "filesystem://" else None,
        broker_connection_retry_on_startup=True,
        task_queues=[KombuQueue(str(name)) for name in QUEUES],  # type: ignore[no-untyped-call]
        task_default_queue=str(Queue.io),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A message is acknowledged only after its task ran; a worker lost mid-task leaves it
        # for re-delivery (Redis). The job table's claim keeps re-delivery from doubling work.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # pidbox control messages need fanout, which the filesystem transport lacks.
        worker_enable_remote_control=not url.startswith("filesystem://"),
    )
    # Imported by the worker at start; tasks are shared_tasks, bound to this app.
    app.conf.include = ["worker.tasks"]
    return app

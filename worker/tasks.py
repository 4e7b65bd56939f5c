"""Celery tasks, registered under the task names of :mod:`raddraft.job_contract`.

Each task receives a job id only; the job row holds the arguments, which :func:`run_job` reads
back as the contract's dataclass. The bodies live in :mod:`worker.pipeline` (the processor:
drafting) and :mod:`worker.exporter` (results out to PACS and RIS). Neither imports the model
stack at import time: an ``io`` worker never loads torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import shared_task

from raddraft.job_contract import (
    ApplyOrder,
    DraftStudy,
    ExportDicom,
    NotifyCritical,
    Ping,
    PushFhir,
    SendHl7,
)
from worker import exporter, pipeline
from worker.runner import run_job

JobTask = Callable[[int], str]


def _task(name: str) -> Callable[[JobTask], JobTask]:
    """Celery's ``shared_task`` under the job contract's name; typed here once, because Celery
    ships no type hints (the tasks stay plain ``(job_id) -> str`` functions to mypy)."""
    decorator: Callable[[JobTask], JobTask] = shared_task(name=name)
    return decorator


@_task(DraftStudy.TASK)
def draft_study(job_id: int) -> str:
    return run_job(job_id, DraftStudy, pipeline.draft_job, on_dead=pipeline.draft_failed)


@_task(ExportDicom.TASK)
def export_dicom(job_id: int) -> str:
    return run_job(job_id, ExportDicom, exporter.export_dicom_job)


@_task(SendHl7.TASK)
def send_hl7(job_id: int) -> str:
    return run_job(job_id, SendHl7, exporter.send_hl7_job)


@_task(PushFhir.TASK)
def push_fhir(job_id: int) -> str:
    return run_job(job_id, PushFhir, exporter.push_fhir_job)


@_task(ApplyOrder.TASK)
def apply_order(job_id: int) -> str:
    return run_job(job_id, ApplyOrder, pipeline.apply_order_job)


@_task(NotifyCritical.TASK)
def notify_critical(job_id: int) -> str:
    return run_job(job_id, NotifyCritical, exporter.notify_critical_job)


def _pong(job_id: int, args: Ping) -> dict[str, Any]:
    return {"echo": args.echo}


@_task(Ping.TASK)
def ping(job_id: int) -> str:
    """A no-op job: proves the path table -> router -> broker -> worker -> table works."""
    return run_job(job_id, Ping, _pong)

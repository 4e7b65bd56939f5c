"""Celery tasks, registered under the task names of :mod:`raddraft.job_contract`.

Each task receives a job id only; the job row holds the arguments, which :func:`run_job` reads
back as the contract's dataclass. The bodies live in :mod:`worker.pipeline` (the processor:
drafting) and :mod:`worker.exporter` (results out to PACS and RIS). Neither imports the model
stack at import time: an ``io`` worker never loads torch.
"""

from __future__ import annotations

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


@shared_task(name=DraftStudy.TASK)
def draft_study(job_id: int) -> str:
    return run_job(job_id, DraftStudy, pipeline.draft_job, on_dead=pipeline.draft_failed)


@shared_task(name=ExportDicom.TASK)
def export_dicom(job_id: int) -> str:
    return run_job(job_id, ExportDicom, exporter.export_dicom_job)


@shared_task(name=SendHl7.TASK)
def send_hl7(job_id: int) -> str:
    return run_job(job_id, SendHl7, exporter.send_hl7_job)


@shared_task(name=PushFhir.TASK)
def push_fhir(job_id: int) -> str:
    return run_job(job_id, PushFhir, exporter.push_fhir_job)


@shared_task(name=ApplyOrder.TASK)
def apply_order(job_id: int) -> str:
    return run_job(job_id, ApplyOrder, pipeline.apply_order_job)


@shared_task(name=NotifyCritical.TASK)
def notify_critical(job_id: int) -> str:
    return run_job(job_id, NotifyCritical, exporter.notify_critical_job)


def _pong(job_id: int, args: Ping) -> dict[str, Any]:
    return {"echo": args.echo}


@shared_task(name=Ping.TASK)
def ping(job_id: int) -> str:
    """A no-op job: proves the path table -> router -> broker -> worker -> table works."""
    return run_job(job_id, Ping, _pong)

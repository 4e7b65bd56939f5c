"""Celery tasks, by the names producers write into the job table.

Each task receives a job id only; the job row holds the arguments. The bodies live in
:mod:`worker.pipeline` (drafting) and :mod:`worker.dispatcher` (PACS, RIS), imported lazily so
an ``io`` worker never imports the model stack.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from worker.runner import run_job

DRAFT_STUDY = "raddraft.draft_study"
EXPORT_DICOM = "raddraft.export_dicom"
SEND_HL7 = "raddraft.send_hl7"
PUSH_FHIR = "raddraft.push_fhir"
PING = "raddraft.ping"


@shared_task(name=DRAFT_STUDY)
def draft_study(job_id: int) -> str:
    from worker import pipeline

    return run_job(job_id, pipeline.draft_job, on_dead=pipeline.draft_failed)


@shared_task(name=EXPORT_DICOM)
def export_dicom(job_id: int) -> str:
    from worker import dispatcher

    return run_job(job_id, dispatcher.export_dicom_job)


@shared_task(name=SEND_HL7)
def send_hl7(job_id: int) -> str:
    from worker import dispatcher

    return run_job(job_id, dispatcher.send_hl7_job)


@shared_task(name=PUSH_FHIR)
def push_fhir(job_id: int) -> str:
    from worker import dispatcher

    return run_job(job_id, dispatcher.push_fhir_job)


def _pong(job_id: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"echo": args.get("echo")}


@shared_task(name=PING)
def ping(job_id: int) -> str:
    """A no-op job: proves the path table -> router -> broker -> worker -> table works."""
    return run_job(job_id, _pong)

"""The job contract: every kind of background job, its task name, queue, key and arguments.

Producers (the listener completing a study version, the lifecycle drafting or signing a report,
an administrator requeuing) describe a job as one of the frozen dataclasses below and hand it to
:func:`enqueue`; the Celery tasks in :mod:`worker.tasks` are registered under the same
``TASK`` names and read their arguments back with :func:`arguments_of`. Nothing else in
RadDraft spells a task name, a queue or an idempotency key.

The key makes enqueueing idempotent (see :mod:`raddraft.jobs`): completing a study version twice
across a restart, or signing a request that was replayed, still leaves one job.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy.orm import Session

from raddraft import jobs
from raddraft.settings import get_settings


class Queue(enum.StrEnum):
    """Broker queues: ``gpu`` runs drafting where the model is loaded, ``io`` sends results."""

    gpu = "gpu"
    io = "io"


QUEUES: tuple[Queue, ...] = tuple(Queue)


@dataclass(frozen=True)
class DraftStudy:
    """Draft one complete, eligible study version (the listener's job for the worker)."""

    TASK: ClassVar[str] = "raddraft.draft_study"
    QUEUE: ClassVar[Queue] = Queue.gpu

    study_version_pk: int

    @property
    def key(self) -> str:
        return f"draft:version:{self.study_version_pk}"


@dataclass(frozen=True)
class ExportDicom:
    """Send a report version's SR and GSPS to one destination: ``AET@host:port`` (C-STORE) or a
    DICOMweb base URL (STOW-RS), the text of a typed target (``str(target)``), which the
    exporter parses once with :func:`raddraft.destinations.export_target`."""

    TASK: ClassVar[str] = "raddraft.export_dicom"
    QUEUE: ClassVar[Queue] = Queue.io

    report_version_pk: int
    destination: str

    @property
    def key(self) -> str:
        return f"export:{self.report_version_pk}:{self.destination}"


@dataclass(frozen=True)
class SendHl7:
    """Send a report version's ORU^R01 to the RIS over MLLP."""

    TASK: ClassVar[str] = "raddraft.send_hl7"
    QUEUE: ClassVar[Queue] = Queue.io

    report_version_pk: int

    @property
    def key(self) -> str:
        return f"hl7:{self.report_version_pk}"


@dataclass(frozen=True)
class PushFhir:
    """PUT a report version's FHIR resources to the configured FHIR server."""

    TASK: ClassVar[str] = "raddraft.push_fhir"
    QUEUE: ClassVar[Queue] = Queue.io

    report_version_pk: int

    @property
    def key(self) -> str:
        return f"fhir:{self.report_version_pk}"


@dataclass(frozen=True)
class NotifyCritical:
    """Send one recorded critical-finding notice (HL7 to the critical-results receiver, or
    e-mail) and record its acknowledgement; retried like any export."""

    TASK: ClassVar[str] = "raddraft.notify_critical"
    QUEUE: ClassVar[Queue] = Queue.io

    notification_pk: int

    @property
    def key(self) -> str:
        return f"critical:{self.notification_pk}"


@dataclass(frozen=True)
class ApplyOrder:
    """Apply a received order to the drafts of its study (priority, cancellation)."""

    TASK: ClassVar[str] = "raddraft.apply_order"
    QUEUE: ClassVar[Queue] = Queue.io

    order_message_pk: int

    @property
    def key(self) -> str:
        return f"order:{self.order_message_pk}"


@dataclass(frozen=True)
class Ping:
    """A no-op job that proves table -> router -> broker -> worker -> table works."""

    TASK: ClassVar[str] = "raddraft.ping"
    QUEUE: ClassVar[Queue] = Queue.io

    name: str = "ping"
    echo: str | None = None

    @property
    def key(self) -> str:
        return f"ping:{self.name}"


JobArgs = DraftStudy | ExportDicom | SendHl7 | PushFhir | NotifyCritical | ApplyOrder | Ping
KINDS: tuple[type[JobArgs], ...] = (
    DraftStudy,
    ExportDicom,
    SendHl7,
    PushFhir,
    NotifyCritical,
    ApplyOrder,
    Ping,
)
BY_TASK: dict[str, type[JobArgs]] = {kind.TASK: kind for kind in KINDS}
# The jobs whose failures an administrator sees as failed exports.
EXPORT_TASKS: tuple[str, ...] = (
    ExportDicom.TASK,
    SendHl7.TASK,
    PushFhir.TASK,
    NotifyCritical.TASK,
)


def enqueue(
    session: Session,
    job: JobArgs,
    *,
    priority: int = jobs.Priority.routine,
    queue: Queue | None = None,
    max_attempts: int | None = None,
) -> jobs.Job:
    """Add ``job`` to the job table in the caller's transaction (idempotent by its key).

    ``max_attempts`` defaults to ``RADDRAFT_JOB_MAX_ATTEMPTS``. ``queue`` overrides the kind's
    queue; only tests of the router use that (a ping on gpu).
    """
    return jobs.enqueue(
        session,
        task=job.TASK,
        key=job.key,
        args=dataclasses.asdict(job),
        queue=str(queue or job.QUEUE),
        priority=priority,
        max_attempts=get_settings().job_max_attempts if max_attempts is None else max_attempts,
    )


def arguments_of(task: str, args: dict[str, Any]) -> JobArgs:
    """The typed arguments of a job row; :class:`ValueError` for an unknown task or bad args."""
    kind = BY_TASK.get(task)
    if kind is None:
        raise ValueError(f"unknown task {task!r}")
    names = {field.name for field in dataclasses.fields(kind)}
    try:
        return kind(**{name: value for name, value in args.items() if name in names})
    except TypeError as error:
        raise ValueError(f"{task}: bad arguments {args!r}: {error}") from error

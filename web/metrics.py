"""Prometheus metrics at ``/metrics``, in the text exposition format (version 0.0.4), by hand.

Every figure is read from the database at scrape time, so any number of web processes give the
same answer and nothing is lost on restart: counters are counts of rows that only ever grow
(ingest events, job timings, send attempts, signed versions), gauges are counts of rows in a
state. Names are prefixed ``raddraft_``. The output carries no patient data, only counts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from dicom_listener import IngestEvent, IngestEventKind
from raddraft import jobs
from raddraft.db import utcnow
from raddraft.settings import Settings
from report_drafts import ReportState, ReportVersion, SentKind, SentObject, SentState
from web import queue_status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

Labels = tuple[tuple[str, str], ...]


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass
class Family:
    """One metric family: its HELP, TYPE and samples."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append((self.name + suffix, tuple(sorted(labels.items())), float(value)))

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for name, labels, value in self.samples:
            if labels:
                text = ",".join(f'{key}="{escape_label(val)}"' for key, val in labels)
                lines.append(f"{name}{{{text}}} {format_value(value)}")
            else:
                lines.append(f"{name} {format_value(value)}")
        return "\n".join(lines) + "\n"


def histogram(
    family: Family, values: Sequence[float], buckets: Sequence[float], **labels: str
) -> None:
    """Add the cumulative ``_bucket``, ``_sum`` and ``_count`` samples of ``values``."""
    for bound in buckets:
        family.add(
            sum(1 for v in values if v <= bound), "_bucket", le=format_value(bound), **labels
        )
    family.add(len(values), "_bucket", le="+Inf", **labels)
    family.add(sum(values), "_sum", **labels)
    family.add(len(values), "_count", **labels)


def ingest_families(session: Session) -> list[Family]:
    events = Family(
        "raddraft_ingest_events_total", "counter", "DICOM listener events by kind (stored, ...)."
    )
    counts = {kind.value: 0 for kind in IngestEventKind}
    for kind, count in session.execute(
        select(IngestEvent.kind, func.count()).group_by(IngestEvent.kind)
    ):
        counts[str(kind)] = int(count)
    for kind, count in sorted(counts.items()):
        events.add(count, kind=kind)
    stored_bytes = session.scalar(
        select(func.coalesce(func.sum(IngestEvent.size_bytes), 0)).where(
            IngestEvent.kind == IngestEventKind.stored
        )
    )
    size = Family("raddraft_ingest_bytes_total", "counter", "Bytes of DICOM instances stored.")
    size.add(float(stored_bytes or 0))
    return [events, size]


def job_families(session: Session) -> list[Family]:
    depth = Family(
        "raddraft_queue_jobs", "gauge", "Jobs in the job table by queue and state (queue depth)."
    )
    seen: dict[tuple[str, str], int] = {}
    for row in queue_status.jobs_by_queue_state(session):
        seen[(row["queue"], row["state"])] = row["count"]
    queues = {q for q, _ in seen} | {"gpu", "io"}
    for name in sorted(queues):
        for state in jobs.JobState:
            depth.add(seen.get((name, state.value), 0), queue=name, state=state.value)

    durations: dict[str, list[float]] = defaultdict(list)
    rows = session.execute(
        select(jobs.Job.task, jobs.Job.timings, jobs.Job.started_at, jobs.Job.finished_at).where(
            jobs.Job.state == jobs.JobState.done
        )
    )
    for task, timings, started, finished in rows:
        value = (timings or {}).get("run_s")
        if not isinstance(value, int | float) and started and finished:
            value = (finished - started).total_seconds()
        if isinstance(value, int | float):
            durations[task].append(max(float(value), 0.0))
    duration = Family(
        "raddraft_task_duration_seconds", "histogram", "Run time of finished jobs by task."
    )
    for task in sorted(durations):
        histogram(duration, durations[task], DURATION_BUCKETS, task=task)

    dead_exports = session.scalar(
        select(func.count())
        .select_from(jobs.Job)
        .where(jobs.Job.state == jobs.JobState.dead, jobs.Job.task.in_(queue_status.EXPORT_TASKS))
    )
    dead = Family(
        "raddraft_exports_dead_lettered", "gauge", "Export jobs out of attempts (dead letters)."
    )
    dead.add(int(dead_exports or 0))
    return [depth, duration, dead]


def export_families(session: Session) -> list[Family]:
    """Failed send attempts (attempts not followed by success) and objects by state."""
    failures = Family(
        "raddraft_export_failures_total",
        "counter",
        "Failed attempts to send SR, GSPS, HL7 or FHIR objects, by kind.",
    )
    states = Family("raddraft_sent_objects", "gauge", "Outbound objects by kind and state.")
    failed_by_kind = {kind.value: 0 for kind in SentKind}
    by_state: dict[tuple[str, str], int] = {}
    rows = session.execute(
        select(
            SentObject.kind,
            SentObject.state,
            func.count(),
            func.coalesce(func.sum(SentObject.attempts), 0),
            func.coalesce(func.sum(case((SentObject.state == SentState.sent, 1), else_=0)), 0),
        ).group_by(SentObject.kind, SentObject.state)
    )
    for kind, state, count, attempts, successes in rows:
        failed_by_kind[str(kind)] = (
            failed_by_kind.get(str(kind), 0) + int(attempts) - int(successes)
        )
        by_state[(str(kind), str(state))] = int(count)
    for kind, count in sorted(failed_by_kind.items()):
        failures.add(count, kind=kind)
    for kind in sorted(failed_by_kind):
        for state in SentState:
            states.add(by_state.get((kind, state.value), 0), kind=kind, state=state.value)
    return [failures, states]


def report_families(session: Session) -> list[Family]:
    reports = Family("raddraft_reports", "gauge", "Reports (drafts) by lifecycle state.")
    for state, count in sorted(queue_status.reports_by_state(session).items()):
        reports.add(count, state=state)
    versions = Family(
        "raddraft_report_versions_total", "counter", "Report versions written, by action."
    )
    for action, count in sorted(
        session.execute(
            select(ReportVersion.action, func.count()).group_by(ReportVersion.action)
        ).all()
    ):
        versions.add(int(count), action=str(action))
    unchanged = Family(
        "raddraft_signed_without_edit_total",
        "counter",
        "First signatures whose text and findings equal the AI draft (reader-study figure).",
    )
    signs = session.scalars(select(ReportVersion.diff).where(ReportVersion.action == "sign"))
    unchanged.add(sum(1 for diff in signs if (diff or {}).get("unchanged")))
    return [reports, versions, unchanged]


def worker_families(session: Session, settings: Settings) -> list[Family]:
    alive = Family("raddraft_workers_alive", "gauge", "Workers heard from within a job lease.")
    age = Family(
        "raddraft_worker_heartbeat_age_seconds", "gauge", "Seconds since each worker's heartbeat."
    )
    found = queue_status.workers(session, settings, utcnow())
    alive.add(sum(1 for w in found if w["alive"]))
    for w in found:
        age.add(w["age_s"] or 0.0, worker=w["name"], queues=w["queues"], model=w["model"])
    return [alive, age]


def disk_families(settings: Settings) -> list[Family]:
    info = queue_status.disk(settings)
    used = Family("raddraft_disk_used_ratio", "gauge", "Used share of the data directory's disk.")
    used.add(info["used_percent"] / 100.0)
    mark = Family(
        "raddraft_disk_watermark_ratio", "gauge", "Disk use above which C-STORE is refused."
    )
    mark.add(info["watermark_percent"] / 100.0)
    return [used, mark]


def render(families: Iterable[Family]) -> str:
    return "".join(f.render() for f in families)


def collect(session: Session, settings: Settings) -> str:
    """The whole exposition text."""
    families: list[Family] = []
    families += ingest_families(session)
    families += job_families(session)
    families += export_families(session)
    families += report_families(session)
    families += worker_families(session, settings)
    families += disk_families(settings)
    return render(families)


__all__ = ["CONTENT_TYPE", "ReportState", "collect"]

"""Prometheus metrics at ``/metrics``, in the text exposition format (version 0.0.4), by hand.

Every figure is read from the database at scrape time, so any number of web processes give the
same answer and nothing is lost on restart. Counts are not recounted per scrape: triggers keep
them as rows change (:mod:`raddraft.counters`, migration 0011), so a scrape costs the same with
a day's archive or five years'. Counters only ever grow (ingest events, job run times, send
attempts, versions written), gauges are rows in a state. Names are prefixed ``raddraft_``.
The output carries no patient data, only counts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from dicom_listener import IngestEventKind
from raddraft import counters, jobs
from raddraft.db import utcnow
from raddraft.settings import Settings
from report_drafts import ReportState, SentKind, SentState
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
    family: Family,
    per_bucket: dict[str, float],
    total: float,
    buckets: Sequence[float],
    **labels: str,
) -> None:
    """Add the cumulative ``_bucket``, ``_sum`` and ``_count`` samples from counts per bucket
    (each value counted once, under the smallest bound it fits; ``+Inf`` beyond the last)."""
    running = 0.0
    for bound in buckets:
        running += per_bucket.get(format_value(bound), 0.0)
        family.add(running, "_bucket", le=format_value(bound), **labels)
    running += per_bucket.get("+Inf", 0.0)
    family.add(running, "_bucket", le="+Inf", **labels)
    family.add(total, "_sum", **labels)
    family.add(running, "_count", **labels)


COUNTED = (
    "reports",
    "jobs",
    "job_duration",
    "job_duration_sum",
    "sent_objects",
    "sent_attempts",
    "ingest_events",
    "ingest_bytes",
    "report_versions",
    "signed_without_edit",
)


def ingest_families(totals: dict[counters.Key, float]) -> list[Family]:
    events = Family(
        "raddraft_ingest_events_total", "counter", "DICOM listener events by kind (stored, ...)."
    )
    counts = {kind.value: 0.0 for kind in IngestEventKind}
    for (kind,), count in counters.by_labels(totals, "ingest_events").items():
        counts[kind] = count
    for kind, count in sorted(counts.items()):
        events.add(count, kind=kind)
    size = Family("raddraft_ingest_bytes_total", "counter", "Bytes of DICOM instances stored.")
    size.add(totals.get(("ingest_bytes", ""), 0.0))
    return [events, size]


def job_families(totals: dict[counters.Key, float]) -> list[Family]:
    depth = Family(
        "raddraft_queue_jobs", "gauge", "Jobs in the job table by queue and state (queue depth)."
    )
    seen: dict[tuple[str, str], float] = defaultdict(float)
    dead_exports = 0.0
    for (queue, state, task), count in counters.by_labels(totals, "jobs").items():
        seen[(queue, state)] += count
        if state == jobs.JobState.dead and task in queue_status.EXPORT_TASKS:
            dead_exports += count
    queues = {q for q, _ in seen} | {"gpu", "io"}
    for name in sorted(queues):
        for state in jobs.JobState:
            depth.add(seen.get((name, state.value), 0), queue=name, state=state.value)

    duration = Family(
        "raddraft_task_duration_seconds", "histogram", "Run time of finished jobs by task."
    )
    per_bucket: dict[str, dict[str, float]] = defaultdict(dict)
    for (task, le), count in counters.by_labels(totals, "job_duration").items():
        per_bucket[task][le] = count
    for task in sorted(per_bucket):
        histogram(
            duration,
            per_bucket[task],
            totals.get(("job_duration_sum", task), 0.0),
            DURATION_BUCKETS,
            task=task,
        )

    dead = Family(
        "raddraft_exports_dead_lettered", "gauge", "Export jobs out of attempts (dead letters)."
    )
    dead.add(dead_exports)
    return [depth, duration, dead]


def export_families(totals: dict[counters.Key, float]) -> list[Family]:
    """Failed send attempts (attempts not followed by success) and objects by state."""
    failures = Family(
        "raddraft_export_failures_total",
        "counter",
        "Failed attempts to send SR, GSPS, HL7 or FHIR objects, by kind.",
    )
    states = Family("raddraft_sent_objects", "gauge", "Outbound objects by kind and state.")
    failed_by_kind = {kind.value: 0.0 for kind in SentKind}
    for (kind,), attempts in counters.by_labels(totals, "sent_attempts").items():
        failed_by_kind[kind] = failed_by_kind.get(kind, 0.0) + attempts
    by_state: dict[tuple[str, str], float] = {}
    for (kind, state), count in counters.by_labels(totals, "sent_objects").items():
        by_state[(kind, state)] = count
        failed_by_kind.setdefault(kind, 0.0)
        if state == SentState.sent:
            failed_by_kind[kind] -= count
    for kind, count in sorted(failed_by_kind.items()):
        failures.add(count, kind=kind)
    for kind in sorted(failed_by_kind):
        for state in SentState:
            states.add(by_state.get((kind, state.value), 0), kind=kind, state=state.value)
    return [failures, states]


def report_families(totals: dict[counters.Key, float]) -> list[Family]:
    reports = Family("raddraft_reports", "gauge", "Reports (drafts) by lifecycle state.")
    for state, number in sorted(queue_status.reports_by_state(totals).items()):
        reports.add(number, state=state)
    versions = Family(
        "raddraft_report_versions_total", "counter", "Report versions written, by action."
    )
    for (action,), count in sorted(counters.by_labels(totals, "report_versions").items()):
        versions.add(count, action=action)
    unchanged = Family(
        "raddraft_signed_without_edit_total",
        "counter",
        "First signatures whose text and findings equal the AI draft (reader-study figure).",
    )
    unchanged.add(totals.get(("signed_without_edit", ""), 0.0))
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
    # Not the page's rounded percentage: a scrape sees every megabyte the archive takes.
    used.add(info["used_bytes"] / info["total_bytes"] if info["total_bytes"] else 0.0)
    mark = Family(
        "raddraft_disk_watermark_ratio", "gauge", "Disk use above which C-STORE is refused."
    )
    mark.add(info["watermark_percent"] / 100.0)
    return [used, mark]


def render(families: Iterable[Family]) -> str:
    return "".join(f.render() for f in families)


def collect(session: Session, settings: Settings) -> str:
    """The whole exposition text: counts from the counters (no table is recounted), workers
    and disk as they are now."""
    totals = queue_status.counted(session, COUNTED)
    families: list[Family] = []
    families += ingest_families(totals)
    families += job_families(totals)
    families += export_families(totals)
    families += report_families(totals)
    families += worker_families(session, settings)
    families += disk_families(settings)
    return render(families)


__all__ = ["CONTENT_TYPE", "ReportState", "collect"]

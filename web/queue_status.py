"""The administrator's queue figures, gathered from the tables in one read-only pass.

Shared by the queue page (rendered once server-side, then refreshed from ``/queue/data.json``)
and, for the counts, by :mod:`web.metrics`. Every figure says what it is measured
from, so an operator can check it against the database.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import false, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import report_drafts as drafts
from dicom_listener import (
    IngestEvent,
    IngestEventKind,
    Study,
    StudyVersion,
    VersionState,
    instance_conflicts,
)
from raddraft import counters, job_contract, jobs
from raddraft.db import iso, utcnow
from raddraft.settings import Settings
from report_drafts import DraftRun, Report, ReportState, ReportVersion, SentObject, SentState

EXPORT_TASKS = job_contract.EXPORT_TASKS
LATENCY_WINDOW = dt.timedelta(days=1)
LIST_LIMIT = 50
WORKER_LIMIT = 200  # worker processes a site runs, with room to spare
GONE_AFTER_LEASES = 10
CONFLICT_LIMIT = 20  # the newest; `raddraft studies conflicts` lists more
READER_WINDOW = dt.timedelta(days=7)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` (0..1) percentile by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(name: str, values: Sequence[float], group: str = "") -> dict[str, Any]:
    return {
        "group": group,
        "name": name,
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
    }


def _seconds(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max((later - earlier).total_seconds(), 0.0)


def counted(session: Session, names: tuple[str, ...]) -> dict[counters.Key, float]:
    """The kept counts of ``names``, after folding what changed since the last read.

    The fold is a write in a read request: when the database refuses it now (SQLite busy,
    another folder), the totals are still exact, only the next read folds.
    """
    try:
        counters.fold(session)
        session.commit()
    except OperationalError:
        session.rollback()
    return counters.read(session, names)


def reports_by_state(totals: dict[counters.Key, float]) -> dict[str, int]:
    counts = {state.value: 0 for state in ReportState}
    for (state,), count in counters.by_labels(totals, "reports").items():
        counts[state] = int(count)
    return counts


def jobs_by_queue_state(totals: dict[counters.Key, float]) -> list[dict[str, Any]]:
    by_queue_state: dict[tuple[str, str], float] = defaultdict(float)
    for (queue, state, _task), count in counters.by_labels(totals, "jobs").items():
        by_queue_state[(queue, state)] += count
    return [
        {"queue": queue, "state": state, "count": int(count)}
        for (queue, state), count in sorted(by_queue_state.items())
        if count
    ]


def throughput(session: Session, now: dt.datetime) -> dict[str, dict[str, int]]:
    """Drafts made, reports signed and instances stored in the last hour and day."""
    result: dict[str, dict[str, int]] = {}
    for label, since in (("hour", now - dt.timedelta(hours=1)), ("day", now - dt.timedelta(1))):
        drafted = session.scalar(
            select(func.count())
            .select_from(ReportVersion)
            .where(ReportVersion.action == "draft", ReportVersion.created_at >= since)
        )
        signed = session.scalar(
            select(func.count())
            .select_from(ReportVersion)
            .where(ReportVersion.action == "sign", ReportVersion.created_at >= since)
        )
        stored = session.scalar(
            select(func.count())
            .select_from(IngestEvent)
            .where(IngestEvent.kind == IngestEventKind.stored, IngestEvent.at >= since)
        )
        result[label] = {
            "drafted": int(drafted or 0),
            "signed": int(signed or 0),
            "instances_stored": int(stored or 0),
        }
    return result


def latencies(session: Session, now: dt.datetime) -> list[dict[str, Any]]:
    """p50/p95 over the last day: push to draft, each job timing by task, each model stage."""
    since = now - LATENCY_WINDOW
    push: list[float] = []
    after_completion: list[float] = []
    rows = session.execute(
        select(ReportVersion.created_at, StudyVersion.opened_at, StudyVersion.completed_at)
        .join(Report, Report.id == ReportVersion.report_pk)
        .join(StudyVersion, StudyVersion.id == Report.study_version_pk)
        .where(ReportVersion.action == "draft", ReportVersion.created_at >= since)
    )
    for drafted_at, opened_at, completed_at in rows:
        first = _seconds(drafted_at, opened_at)
        if first is not None:
            push.append(first)
        second = _seconds(drafted_at, completed_at)
        if second is not None:
            after_completion.append(second)
    found = [
        summarise("first image received → draft stored", push, "pipeline"),
        summarise("study complete → draft stored", after_completion, "pipeline"),
    ]

    by_key: dict[tuple[str, str], list[float]] = defaultdict(list)
    done = session.execute(
        select(jobs.Job.task, jobs.Job.timings).where(
            jobs.Job.state == jobs.JobState.done, jobs.Job.finished_at >= since
        )
    )
    for task, timings in done:
        for key, value in (timings or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                by_key[(task, key)].append(float(value))
    found += [summarise(key, values, task) for (task, key), values in sorted(by_key.items())]

    by_stage: dict[str, list[float]] = defaultdict(list)
    for (stages,) in session.execute(select(DraftRun.stages).where(DraftRun.created_at >= since)):
        for stage in stages or []:
            if isinstance(stage, dict) and isinstance(stage.get("seconds"), int | float):
                name = f"stage {stage.get('stage', '?')} {stage.get('name', '')}".strip()
                by_stage[name].append(float(stage["seconds"]))
    found += [summarise(name, values, "model stages") for name, values in sorted(by_stage.items())]
    return found


def _report_brief(
    report: Report, study: Study, now: dt.datetime, since: dt.datetime | None
) -> dict[str, Any]:
    return {
        "report_id": report.id,
        "state": report.state,
        "priority": report.priority,
        "accession": study.accession_number,
        "study_instance_uid": study.study_instance_uid,
        "since": iso(since),
        "waiting_s": _seconds(now, since),
    }


def oldest_waiting(session: Session, now: dt.datetime) -> dict[str, Any]:
    """The study waiting longest for a draft, and the draft waiting longest for a radiologist."""
    waiting_for_draft = session.execute(
        select(Report, Study, StudyVersion.completed_at)
        .join(Study, Study.id == Report.study_pk)
        .join(StudyVersion, StudyVersion.id == Report.study_version_pk)
        .where(Report.state.in_([ReportState.queued, ReportState.drafting]))
        .order_by(func.coalesce(StudyVersion.completed_at, Report.created_at))
        .limit(1)
    ).first()
    waiting_for_review = session.execute(
        select(Report, Study, ReportVersion.created_at)
        .join(Study, Study.id == Report.study_pk)
        .join(
            ReportVersion,
            (ReportVersion.report_pk == Report.id) & (ReportVersion.number == 1),
        )
        .where(Report.state.in_([ReportState.drafted, ReportState.in_review]))
        .order_by(ReportVersion.created_at)
        .limit(1)
    ).first()
    result: dict[str, Any] = {"draft": None, "review": None}
    if waiting_for_draft is not None:
        report, study, completed = waiting_for_draft
        result["draft"] = _report_brief(report, study, now, completed or report.created_at)
    if waiting_for_review is not None:
        report, study, drafted = waiting_for_review
        result["review"] = _report_brief(report, study, now, drafted)
    return result


def workers(session: Session, settings: Settings, now: dt.datetime) -> list[dict[str, Any]]:
    """Worker heartbeats; a worker silent for a job lease is shown as not alive, and is gone
    from the list once a live worker serving its queues started after its last beat (it was
    restarted or replaced) or it stayed silent for :data:`GONE_AFTER_LEASES` leases."""
    lease = settings.job_lease_seconds
    rows = list(
        session.scalars(select(jobs.WorkerBeat).order_by(jobs.WorkerBeat.name).limit(WORKER_LIMIT))
    )
    live = [w for w in rows if (_seconds(now, w.last_seen) or 0.0) <= lease]

    def listed(w: jobs.WorkerBeat) -> bool:
        silent = _seconds(now, w.last_seen) or 0.0
        if silent <= lease:
            return True
        if silent > GONE_AFTER_LEASES * lease:
            return False
        return not any(n.queues == w.queues and n.started_at >= w.last_seen for n in live)

    rows = [w for w in rows if listed(w)]
    return [
        {
            "name": w.name,
            "queues": w.queues,
            "model": w.model,
            "demo": w.demo,
            "pid": w.pid,
            "started_at": iso(w.started_at),
            "last_seen": iso(w.last_seen),
            "age_s": _seconds(now, w.last_seen),
            "alive": (_seconds(now, w.last_seen) or 0.0) <= lease,
            "current_job": w.current_job,
        }
        for w in rows
    ]


def disk(settings: Settings) -> dict[str, Any]:
    """Disk use of the data directory's file system against the listener's watermark."""
    path = settings.data_dir if settings.data_dir.exists() else settings.data_dir.parent
    usage = shutil.disk_usage(path)
    percent = 100.0 * usage.used / usage.total if usage.total else 0.0
    free_mb = usage.free / (1024 * 1024)
    return {
        "path": str(settings.data_dir),
        "total_bytes": usage.total,
        "used_bytes": usage.used,
        "free_bytes": usage.free,
        "used_percent": round(percent, 2),
        "watermark_percent": settings.disk_watermark_percent,
        "min_free_mb": settings.disk_min_free_mb,
        "over": percent >= settings.disk_watermark_percent or free_mb < settings.disk_min_free_mb,
    }


def job_json(job: jobs.Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "key": job.key,
        "task": job.task,
        "queue": job.queue,
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "last_error": job.last_error,
        "finished_at": iso(job.finished_at),
        "args": job.args,
        "export": job.task in EXPORT_TASKS,
    }


def dead_jobs(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(jobs.Job)
        .where(jobs.Job.state == jobs.JobState.dead)
        .order_by(jobs.Job.finished_at.desc(), jobs.Job.id.desc())
        .limit(LIST_LIMIT)
    )
    return [job_json(j) for j in rows]


def failed_sends(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(SentObject)
        .where(SentObject.state == SentState.failed)
        .order_by(SentObject.id.desc())
        .limit(LIST_LIMIT)
    )
    return [
        {
            "id": s.id,
            "kind": s.kind,
            "identifier": s.identifier,
            "destination": s.destination,
            "attempts": s.attempts,
            "last_error": s.last_error,
            "report_version_pk": s.report_version_pk,
        }
        for s in rows
    ]


def failed_reports(session: Session) -> list[dict[str, Any]]:
    """Study versions whose drafting failed: the administrator may requeue them."""
    rows = session.execute(
        select(Report, Study)
        .join(Study, Study.id == Report.study_pk)
        .where(Report.state == ReportState.failed)
        .order_by(Report.updated_at.desc())
        .limit(LIST_LIMIT)
    )
    return [
        {
            "report_id": r.id,
            "study_version_pk": r.study_version_pk,
            "accession": s.accession_number,
            "study_instance_uid": s.study_instance_uid,
            "failure": r.failure,
            "updated_at": iso(r.updated_at),
        }
        for r, s in rows
    ]


def open_versions(session: Session, now: dt.datetime) -> list[dict[str, Any]]:
    """Study versions still receiving images: the administrator may force completion."""
    rows = session.execute(
        select(StudyVersion, Study)
        .join(Study, Study.id == StudyVersion.study_pk)
        .where(StudyVersion.state == VersionState.open)
        .order_by(StudyVersion.opened_at)
        .limit(LIST_LIMIT)
    )
    return [
        {
            "study_version_pk": v.id,
            "number": v.number,
            "accession": s.accession_number,
            "study_instance_uid": s.study_instance_uid,
            "opened_at": iso(v.opened_at),
            "quiet_s": _seconds(now, v.last_instance_at),
        }
        for v, s in rows
    ]


def refused_versions(session: Session) -> list[dict[str, Any]]:
    """Complete study versions not drafted, newest first, each with why (PS3.3 eligibility:
    not a chest radiograph, or no original, for-presentation frontal image)."""
    rows = session.execute(
        select(StudyVersion, Study)
        .join(Study, Study.id == StudyVersion.study_pk)
        # "= false", not "IS false": an index condition (ix_study_versions_eligible_completed).
        .where(StudyVersion.state == VersionState.complete, StudyVersion.eligible == false())
        .order_by(StudyVersion.completed_at.desc(), StudyVersion.id.desc())
        .limit(LIST_LIMIT)
    )
    return [
        {
            "study_version_pk": v.id,
            "number": v.number,
            "accession": s.accession_number,
            "study_instance_uid": s.study_instance_uid,
            "why": v.ineligible_reason or "",
            "completed_at": iso(v.completed_at),
        }
        for v, s in rows
    ]


def conflicts(session: Session) -> list[dict[str, Any]]:
    """The newest instance conflicts (a SOP Instance UID received again with other content,
    answered 0x0111, PS3.7 C.4.2), each with when, the UID, the sender and the attributes
    that differed; the received copy is in quarantine, the archive kept its own."""
    return [
        {
            "at": iso(c.at),
            "sop_instance_uid": c.sop_instance_uid,
            "calling_ae_title": c.calling_ae_title,
            "peer": c.peer,
            "attributes": sorted(c.differences),
            "status": c.status,
        }
        for c in instance_conflicts(session, limit=CONFLICT_LIMIT)
    ]


def queue_figures(
    session: Session, settings: Settings, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Everything the queue page shows, as JSON-ready values."""
    now = now or utcnow()
    totals = counted(session, ("reports", "jobs"))
    # The last 7 days' sign-offs, not every signature ever made (the API's /api/figures
    # gives the whole history on request).
    reader = drafts.reader_figures(session, since=now - READER_WINDOW).to_json()
    reader["window_days"] = READER_WINDOW.days
    return {
        "generated_at": now.isoformat(),
        "reports_by_state": reports_by_state(totals),
        "jobs": jobs_by_queue_state(totals),
        "throughput": throughput(session, now),
        "latency": latencies(session, now),
        "oldest_waiting": oldest_waiting(session, now),
        "workers": workers(session, settings, now),
        "disk": disk(settings),
        "dead_jobs": dead_jobs(session),
        "failed_sends": failed_sends(session),
        "failed_reports": failed_reports(session),
        "open_versions": open_versions(session, now),
        "refused_studies": refused_versions(session),
        "instance_conflicts": conflicts(session),
        "retention": drafts.retention_figures(session, settings, now),
        "reader_figures": reader,
        "critical_notifications": drafts.recent_notifications(session),
    }

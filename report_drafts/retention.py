"""The retention policy: which studies' images may leave the archive, and the audit of it.

A study's instances may be purged (``RADDRAFT_RETENTION_DAYS`` > 0) only when all of these
hold; the first that fails is the reason it is kept:

1. no version is open (nothing is arriving);
2. every report of it is closed: signed, amended, corrected, rejected or superseded; an
   unsigned draft (queued, drafting, drafted, in review, failed) keeps it;
3. no job for it is waiting or running (its draft, an export, HL7 or FHIR message);
4. nothing of its reports is still to be sent (a sent object pending or failed, dead-lettered
   included: an administrator may still retry it);
5. its last report closed (or, with no report, its last version completed) more than
   ``retention_days`` ago;
6. no study that is kept used it as the prior of its draft (``draft_runs.prior``): a prior
   still referenced stays as long as the study that refers to it.

The figures come from a few bulk reads, so the whole archive is judged at once; the purge
itself (:func:`dicom_listener.purge_study`) asks :func:`still_purgeable` again inside its
transaction, so a job or an instance that appeared meanwhile stops it. Reports, versions and
the audit are never purged: only the images.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, literal_column, select
from sqlalchemy.orm import Session

from dicom_listener import Instance, Purged, Series, Study, StudyVersion, VersionState
from raddraft import jobs
from raddraft.db import utcnow
from raddraft.settings import Settings
from report_drafts import audit
from report_drafts.states import SIGNED_STATES, ReportState
from report_drafts.tables import AuditEvent, DraftRun, Report, ReportVersion, SentObject, SentState

CLOSED_STATES = SIGNED_STATES | {ReportState.rejected, ReportState.superseded}
ACTIVE_JOBS = (jobs.JobState.pending, jobs.JobState.dispatched, jobs.JobState.running)
_DRAFT_KEY = re.compile(r"^draft:version:(\d+)$")
_VERSION_KEY = re.compile(r"^(?:export|hl7|fhir):(\d+)(?::|$)")
PURGE_ACTION = "purge"


@dataclass(frozen=True)
class Verdict:
    """The policy's answer for one study that still has images in the archive."""

    study_pk: int
    study_instance_uid: str
    purgeable: bool
    reason: str
    instances: int
    bytes: int


@dataclass
class _Facts:
    uid: dict[int, str]
    archived: dict[int, tuple[int, int]]
    open: set[int]
    reports: dict[int, list[tuple[str, dt.datetime]]]
    completed: dict[int, dt.datetime | None]
    active_jobs: set[int]
    unsent: set[int]
    referenced_by: dict[str, set[int]]


def _facts(session: Session) -> _Facts:
    """Everything the policy looks at, by study pk, in a handful of reads."""
    uid = dict(session.execute(select(Study.id, Study.study_instance_uid)).tuples().all())
    archived = {
        int(pk): (int(count), int(size or 0))
        for pk, count, size in session.execute(
            select(Series.study_pk, func.count(Instance.id), func.sum(Instance.size_bytes))
            .join(Instance, Instance.series_pk == Series.id)
            .group_by(Series.study_pk)
        )
    }
    version_study = dict(
        session.execute(select(StudyVersion.id, StudyVersion.study_pk)).tuples().all()
    )
    open_ = set(
        session.scalars(
            select(StudyVersion.study_pk).where(StudyVersion.state == VersionState.open)
        )
    )
    completed = dict(
        session.execute(
            select(StudyVersion.study_pk, func.max(StudyVersion.completed_at)).group_by(
                StudyVersion.study_pk
            )
        )
        .tuples()
        .all()
    )
    reports: dict[int, list[tuple[str, dt.datetime]]] = defaultdict(list)
    for study_pk, state, updated in session.execute(
        select(Report.study_pk, Report.state, Report.updated_at)
    ):
        reports[study_pk].append((str(state), updated))
    rv_study = dict(
        session.execute(
            select(ReportVersion.id, Report.study_pk).join(
                Report, Report.id == ReportVersion.report_pk
            )
        )
        .tuples()
        .all()
    )
    active: set[int] = set()
    for key in session.scalars(select(jobs.Job.key).where(jobs.Job.state.in_(ACTIVE_JOBS))):
        if match := _DRAFT_KEY.match(key):
            active.add(version_study.get(int(match[1]), -1))
        elif match := _VERSION_KEY.match(key):
            active.add(rv_study.get(int(match[1]), -1))
    unsent = {
        rv_study.get(rv, -1)
        for rv in session.scalars(
            select(SentObject.report_version_pk).where(
                SentObject.state.in_([SentState.pending, SentState.failed])
            )
        )
    }
    referenced_by: dict[str, set[int]] = defaultdict(set)
    for version_pk, prior in session.execute(select(DraftRun.study_version_pk, DraftRun.prior)):
        prior_uid = (prior or {}).get("study_instance_uid")
        if prior_uid:
            referenced_by[str(prior_uid)].add(version_study.get(version_pk, -1))
    return _Facts(uid, archived, open_, reports, completed, active, unsent, referenced_by)


def _own_reason(facts: _Facts, study_pk: int, keep_days: float, now: dt.datetime) -> str | None:
    """Why the study itself is kept (rules 1-5), or None when it may go."""
    if keep_days <= 0:
        return "retention is off (RADDRAFT_RETENTION_DAYS=0)"
    if study_pk in facts.open:
        return "a version is still open (receiving)"
    open_reports = [s for s, _ in facts.reports.get(study_pk, []) if s not in CLOSED_STATES]
    if open_reports:
        return f"report not signed ({', '.join(sorted(set(open_reports)))})"
    if study_pk in facts.active_jobs:
        return "a job for it is waiting or running"
    if study_pk in facts.unsent:
        return "exports pending (not sent, or failed)"
    times: list[dt.datetime | None] = [t for _, t in facts.reports.get(study_pk, [])]
    times = times or [facts.completed.get(study_pk)]
    last = max((t for t in times if t is not None), default=None)
    if last is None:
        return "never completed"
    until = last + dt.timedelta(days=keep_days)
    if until > now:
        return f"kept until {until.isoformat(timespec='minutes')}"
    return None


def verdicts(session: Session, settings: Settings, now: dt.datetime | None = None) -> list[Verdict]:
    """The policy's verdict on every study with images in the archive, oldest study first."""
    now = now or utcnow()
    facts = _facts(session)
    reasons = {pk: _own_reason(facts, pk, settings.retention_days, now) for pk in facts.uid}
    # Rule 6: a kept study keeps its prior, and that prior's prior; repeat until stable.
    changed = True
    while changed:
        changed = False
        for pk, reason in reasons.items():
            if reason is not None:
                continue
            keepers = [r for r in facts.referenced_by.get(facts.uid[pk], ()) if r != pk]
            kept_by = [r for r in keepers if reasons.get(r) is not None]
            if kept_by:
                reasons[pk] = f"prior of kept study {facts.uid.get(kept_by[0], '?')}"
                changed = True
    return [
        Verdict(
            pk,
            facts.uid[pk],
            reasons[pk] is None,
            reasons[pk] or "purgeable",
            *facts.archived[pk],
        )
        for pk in sorted(facts.archived)
    ]


OPEN_REPORT_STATES = tuple(state.value for state in ReportState if state not in CLOSED_STATES)
#: Candidates whose prior references one query looks up at once.
_CHUNK = 1000


def _prior_uid(session: Session) -> Any:
    """``draft_runs.prior``'s Study Instance UID, written as the expression index has it."""
    if session.get_bind().dialect.name == "postgresql":
        return literal_column("(draft_runs.prior ->> 'study_instance_uid')")
    return literal_column("json_extract(draft_runs.prior, '$.study_instance_uid')")


def _own_rules(keep_days: float, now: dt.datetime) -> list[Any]:
    """Rules 1-5 as conditions on ``Study`` (correlated): true when the study itself may go.

    Each set a rule excludes is small whatever the archive's size (open versions, unsigned
    reports, active jobs, unsent objects: each read by its state index).
    """
    active_version = jobs.Job.args["study_version_pk"].as_integer()
    active_report_version = jobs.Job.args["report_version_pk"].as_integer()
    last_closed = func.coalesce(
        select(func.max(Report.updated_at)).where(Report.study_pk == Study.id).scalar_subquery(),
        select(func.max(StudyVersion.completed_at))
        .where(StudyVersion.study_pk == Study.id)
        .scalar_subquery(),
    )
    return [
        ~exists().where(StudyVersion.study_pk == Study.id, StudyVersion.state == VersionState.open),
        ~exists().where(Report.study_pk == Study.id, Report.state.in_(OPEN_REPORT_STATES)),
        Study.id.not_in(
            select(StudyVersion.study_pk).where(
                StudyVersion.id.in_(
                    select(active_version).where(
                        jobs.Job.state.in_(ACTIVE_JOBS), active_version.is_not(None)
                    )
                )
            )
        ),
        Study.id.not_in(
            select(Report.study_pk)
            .join(ReportVersion, ReportVersion.report_pk == Report.id)
            .where(
                ReportVersion.id.in_(
                    select(active_report_version).where(
                        jobs.Job.state.in_(ACTIVE_JOBS), active_report_version.is_not(None)
                    )
                )
            )
        ),
        Study.id.not_in(
            select(Report.study_pk)
            .join(ReportVersion, ReportVersion.report_pk == Report.id)
            .join(SentObject, SentObject.report_version_pk == ReportVersion.id)
            .where(SentObject.state.in_([SentState.pending, SentState.failed]))
        ),
        last_closed < now - dt.timedelta(days=keep_days),
    ]


def _kept_as_prior(
    session: Session, candidates: dict[int, str], keep_days: float, now: dt.datetime
) -> set[int]:
    """Rule 6 for ``candidates`` (pk -> UID, each passing rules 1-5): those a kept study
    used as its prior, following the chain forward (a prior's prior) as far as it goes."""
    prior_uid = _prior_uid(session)
    uid_of = dict(candidates)
    edges: list[tuple[int, int]] = []  # (prior study, study whose draft read it)
    frontier = {uid: pk for pk, uid in candidates.items()}
    while frontier:
        found: dict[str, int] = {}
        uids = list(frontier)
        for start in range(0, len(uids), _CHUNK):
            rows = session.execute(
                select(prior_uid, Study.id, Study.study_instance_uid)
                .select_from(DraftRun)
                .join(StudyVersion, StudyVersion.id == DraftRun.study_version_pk)
                .join(Study, Study.id == StudyVersion.study_pk)
                .where(prior_uid.in_(uids[start : start + _CHUNK]))
            )
            for referenced, reader_pk, reader_uid in rows:
                prior_pk = frontier[str(referenced)]
                if reader_pk == prior_pk:
                    continue
                edges.append((prior_pk, reader_pk))
                if reader_pk not in uid_of:
                    uid_of[reader_pk] = reader_uid
                    found[reader_uid] = reader_pk
        frontier = found
    readers = [pk for pk in uid_of if pk not in candidates]
    passing: set[int] = set(candidates)
    for start in range(0, len(readers), _CHUNK):
        passing |= set(
            session.scalars(
                select(Study.id).where(
                    Study.id.in_(readers[start : start + _CHUNK]), *_own_rules(keep_days, now)
                )
            )
        )
    kept = set(uid_of) - passing
    changed = True
    while changed:
        changed = False
        for prior_pk, reader_pk in edges:
            if reader_pk in kept and prior_pk not in kept:
                kept.add(prior_pk)
                changed = True
    return kept & set(candidates)


def purge_candidates(
    session: Session,
    settings: Settings,
    now: dt.datetime | None = None,
    *,
    limit: int | None = None,
    study_pk: int | None = None,
) -> list[Verdict]:
    """The studies whose images may go now (at most ``limit``), oldest study first.

    One query finds the archived studies that pass rules 1-5, driven by the archived
    instances (what the archive still holds: a purged study costs nothing again); rule 6
    then follows the prior references of those candidates only. :func:`verdicts` (the dry
    run's ``--all``) still judges every study, to say why each one stays.
    """
    now = now or utcnow()
    if settings.retention_days <= 0:
        return []
    archived = (
        select(
            Series.study_pk.label("study_pk"),
            func.count(Instance.id).label("instances"),
            func.coalesce(func.sum(Instance.size_bytes), 0).label("bytes"),
        )
        .join(Series, Series.id == Instance.series_pk)
        .group_by(Series.study_pk)
    )
    if study_pk is not None:
        archived = archived.where(Series.study_pk == study_pk)
    held = archived.subquery()
    query = (
        select(Study.id, Study.study_instance_uid, held.c.instances, held.c.bytes)
        .join(held, held.c.study_pk == Study.id)
        .where(*_own_rules(settings.retention_days, now))
        .order_by(Study.id)
    )
    found: list[Verdict] = []
    after = 0
    # Unlimited (the dry run): one pass. Limited (a scheduled batch): a few more than asked,
    # and another look only when rule 6 kept too many of them.
    batch = None if limit is None else max(limit * 4, 100)
    while limit is None or len(found) < limit:
        page = query.where(Study.id > after)
        rows = session.execute(page if batch is None else page.limit(batch)).all()
        if not rows:
            break
        after = rows[-1][0]
        kept = _kept_as_prior(
            session, {pk: uid for pk, uid, _, _ in rows}, settings.retention_days, now
        )
        found += [
            Verdict(pk, uid, True, "purgeable", int(count), int(size))
            for pk, uid, count, size in rows
            if pk not in kept
        ]
        if batch is None or len(rows) < batch:
            break
    return found[:limit] if limit is not None else found


def still_purgeable(session: Session, settings: Settings, study_pk: int) -> bool:
    """Asked again inside the purge's transaction (rules 1-6 on what is committed now), for
    this study only."""
    return bool(purge_candidates(session, settings, study_pk=study_pk))


def record_purge(session: Session, purged: Purged, *, retention_days: float) -> None:
    """The audit record of one study's purge, in the purge's transaction."""
    audit.record(
        session,
        PURGE_ACTION,
        study_instance_uid=purged.study_instance_uid,
        detail={
            "instances": purged.instances,
            "bytes": purged.bytes,
            "retention_days": retention_days,
        },
    )


def retention_figures(
    session: Session, settings: Settings, now: dt.datetime | None = None
) -> dict[str, Any]:
    """For the queue page: the policy, the last purge and what went in the last 7 days."""
    now = now or utcnow()
    since = now - dt.timedelta(days=7)
    in_window = (AuditEvent.action == PURGE_ACTION, AuditEvent.at >= since)
    count = session.scalar(select(func.count()).select_from(AuditEvent).where(*in_window))
    recent = list(
        session.scalars(
            select(AuditEvent).where(*in_window).order_by(AuditEvent.at.desc()).limit(10)
        )
    )
    purged_bytes = 0
    # Bytes sit in each event's JSON detail: summed over the window's events, 7 days of purges
    # (bounded by the work done, never by the archive's size), only the one column read.
    for (detail,) in session.execute(select(AuditEvent.detail).where(*in_window)):
        purged_bytes += int((detail or {}).get("bytes", 0))
    last = session.scalar(select(func.max(AuditEvent.at)).where(AuditEvent.action == PURGE_ACTION))
    return {
        "retention_days": settings.retention_days,
        "interval_s": settings.retention_interval_seconds,
        "last_purge_at": last.isoformat() if last else None,
        "purged_7d": int(count or 0),
        "purged_bytes_7d": purged_bytes,
        "recent": [
            {
                "at": e.at.isoformat(),
                "study_instance_uid": e.study_instance_uid,
                "instances": e.detail.get("instances"),
                "bytes": e.detail.get("bytes"),
            }
            for e in recent
        ],
    }

"""Study completion: when a study version stops receiving, whether to draft it, and the job.

DICOM has no "study done" message for pushes (the Instance Availability Notification and MPPS
are seldom wired to a reporting assistant), so completion is inferred like mercure does:

- *quiet*: no new instance for ``completion_quiet_seconds``;
- *cxr_rule* (sooner): a frontal (PA/AP) view is present and either a lateral is present too
  (the usual two-view chest: complete after a 2 s burst grace) or ``completion_cxr_rule_seconds``
  passed since the last instance (a single frontal, typical of a bedside AP);
- *forced*: ``raddraft study complete UID``;
- *at release*: when the sending association is released and a study it touched already has a
  frontal and a lateral, it completes at once (:func:`complete_pushed`), without the grace.

Views count cumulatively over the study's versions: a lateral arriving after the PA's version
completed closes its own version at once, and that version's draft reads both images.

Completing is one conditional UPDATE (``state='open' AND last_instance_at=<seen>``) followed, in
the same transaction, by the eligibility verdict and the job. Any number of listener processes
may run the timer: exactly one UPDATE wins, and an instance arriving meanwhile makes the UPDATE
miss (see ``ingest._open_version``). The job's key (:class:`raddraft.job_contract.DraftStudy`)
makes the enqueue itself idempotent too.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dicom_listener.eligibility import (
    ImageFacts,
    ImagePolicy,
    eligibility,
    has_frontal,
    has_lateral,
)
from dicom_listener.tables import (
    CompletionReason,
    IngestEvent,
    IngestEventKind,
    Instance,
    Series,
    Study,
    StudyVersion,
    VersionState,
)
from raddraft import job_contract
from raddraft.db import session_scope, utcnow
from raddraft.logging import kv
from raddraft.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Seconds of quiet the frontal + lateral rule still waits (bounded by completion_cxr_rule_seconds).
CXR_BURST_GRACE_SECONDS = 2.0


@dataclass(frozen=True)
class Completed:
    """A version this call completed."""

    study_version_pk: int
    study_instance_uid: str
    number: int
    reason: CompletionReason
    eligible: bool
    ineligible_reason: str | None
    job_key: str | None


def cumulative_facts(session: Session, study_pk: int, up_to_number: int) -> list[ImageFacts]:
    """The facts of every instance of the study in versions numbered up to ``up_to_number``."""
    rows = session.execute(
        select(
            Series.modality,
            Series.body_part_examined,
            Series.series_description,
            Instance.view_position,
            Instance.view_code,
            Instance.image_type,
            Instance.presentation_intent,
            Instance.sop_class_uid,
            Instance.sop_instance_uid,
        )
        .join(Instance, Instance.series_pk == Series.id)
        .join(StudyVersion, Instance.version_pk == StudyVersion.id)
        .where(StudyVersion.study_pk == study_pk, StudyVersion.number <= up_to_number)
    ).all()
    return [ImageFacts(*row) for row in rows]


def due_reason(
    facts: list[ImageFacts], quiet_for: float, settings: Settings
) -> CompletionReason | None:
    """Why a version whose last instance came ``quiet_for`` seconds ago is complete, or None."""
    if has_frontal(facts):
        # Frontal + lateral still waits out a short burst grace: a modality pushing a third
        # image right behind the first two should not split the study into two versions.
        grace = min(CXR_BURST_GRACE_SECONDS, settings.completion_cxr_rule_seconds)
        wait = grace if has_lateral(facts) else settings.completion_cxr_rule_seconds
        if quiet_for >= wait:
            return CompletionReason.cxr_rule
    if quiet_for >= settings.completion_quiet_seconds:
        return CompletionReason.quiet
    return None


def _complete(
    session: Session,
    version: StudyVersion,
    reason: CompletionReason,
    seen_last_instance_at: dt.datetime | None,
) -> Completed | None:
    """Close ``version`` if still open (and untouched since seen); judge it; enqueue its draft."""
    now = utcnow()
    condition = [StudyVersion.id == version.id, StudyVersion.state == VersionState.open]
    if seen_last_instance_at is not None:
        condition.append(StudyVersion.last_instance_at == seen_last_instance_at)
    won = session.execute(
        update(StudyVersion)
        .where(*condition)
        .values(state=VersionState.complete, completed_at=now, completion_reason=reason.value)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if won != 1:
        return None  # another process completed it, or an instance just arrived
    study = session.get_one(Study, version.study_pk)
    eligible, why_not = eligibility(
        study.study_description,
        cumulative_facts(session, study.id, version.number),
        ImagePolicy.from_settings(get_settings()),
    )
    key = None
    if eligible:
        draft = job_contract.DraftStudy(version.id)
        job_contract.enqueue(session, draft, priority=study.priority)
        key = draft.key
    session.execute(
        update(StudyVersion)
        .where(StudyVersion.id == version.id)
        .values(eligible=eligible, ineligible_reason=why_not, job_key=key)
        .execution_options(synchronize_session=False)
    )
    session.add(
        IngestEvent(
            kind=IngestEventKind.completed.value,
            study_instance_uid=study.study_instance_uid,
            detail={
                "version": version.number,
                "reason": reason.value,
                "eligible": eligible,
                "ineligible_reason": why_not,
                "job_key": key,
            },
        )
    )
    log.info(
        "study version complete %s",
        kv(
            study=study.study_instance_uid,
            version=version.number,
            reason=reason.value,
            eligible=eligible,
            why_not=why_not,
            job=key,
        ),
    )
    return Completed(
        version.id, study.study_instance_uid, version.number, reason, eligible, why_not, key
    )


def complete_due(engine: Engine, settings: Settings) -> list[Completed]:
    """Complete every open version whose time has come; one transaction per version."""
    done: list[Completed] = []
    with Session(engine) as session:
        candidates = list(
            session.scalars(select(StudyVersion).where(StudyVersion.state == VersionState.open))
        )
    for candidate in candidates:
        with session_scope(engine) as session:
            version = session.get(StudyVersion, candidate.id)
            if version is None or version.state != VersionState.open:
                continue
            quiet_for = (utcnow() - version.last_instance_at).total_seconds()
            facts = cumulative_facts(session, version.study_pk, version.number)
            reason = due_reason(facts, quiet_for, settings)
            if reason is None:
                continue
            result = _complete(session, version, reason, version.last_instance_at)
            if result is not None:
                done.append(result)
    return done


def complete_pushed(engine: Engine, study_instance_uids: set[str]) -> list[Completed]:
    """At the end of an association: complete its studies that hold a frontal and a lateral.

    A sender's association release (PS3.8 7.2) says that push is over, so a two-view chest
    needs no burst grace then. Studies without both views keep waiting for the timer. The
    conditional update still yields to an instance another association is adding right now.
    """
    done: list[Completed] = []
    for uid in sorted(study_instance_uids):
        with session_scope(engine) as session:
            versions = session.scalars(
                select(StudyVersion)
                .join(Study, Study.id == StudyVersion.study_pk)
                .where(Study.study_instance_uid == uid, StudyVersion.state == VersionState.open)
            ).all()
            for version in versions:
                facts = cumulative_facts(session, version.study_pk, version.number)
                if not (has_frontal(facts) and has_lateral(facts)):
                    continue
                result = _complete(
                    session, version, CompletionReason.cxr_rule, version.last_instance_at
                )
                if result is not None:
                    done.append(result)
    return done


def complete_study(engine: Engine, study_instance_uid: str) -> list[Completed]:
    """Force completion of the study's open version(s) now; [] when none is open.

    Raises :class:`LookupError` when the study is unknown.
    """
    done: list[Completed] = []
    with session_scope(engine) as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
        if study is None:
            raise LookupError(f"no study {study_instance_uid}")
        versions = session.scalars(
            select(StudyVersion).where(
                StudyVersion.study_pk == study.id, StudyVersion.state == VersionState.open
            )
        ).all()
        for version in versions:
            result = _complete(session, version, CompletionReason.forced, None)
            if result is not None:
                done.append(result)
    return done


class CompletionTimer(threading.Thread):
    """Runs :func:`complete_due` every ``completion_poll_seconds`` until stopped."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        super().__init__(name="raddraft-completion", daemon=True)
        self.engine = engine
        self.settings = settings
        self._stop_event = threading.Event()

    def run(self) -> None:
        poll = max(self.settings.completion_poll_seconds, 0.05)
        while not self._stop_event.wait(poll):
            try:
                complete_due(self.engine, self.settings)
            except Exception:
                # A database outage must not kill the timer; the next poll tries again.
                log.exception("completion poll failed")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

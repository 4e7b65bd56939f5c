"""The retention purge: the policy (report_drafts) meets the archive (dicom_listener).

:func:`purge` takes every study the policy lets go out of the archive, one transaction per
study, asking the policy again inside it, and writes the audit record there too. The router
runs it every ``retention_interval_seconds`` (:func:`purge_if_due`); ``raddraft archive purge``
runs it by hand (everything at once), ``--dry-run`` only says what would go. A scheduled pass
takes at most :data:`BATCH` studies, so the router's dispatching is never held up for long.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.orm import Session

import dicom_listener
import report_drafts
from raddraft.db import session_scope
from raddraft.logging import kv
from raddraft.settings import Settings

log = logging.getLogger(__name__)


def candidates(settings: Settings, limit: int | None = None) -> list[report_drafts.Verdict]:
    """What would go now (at most ``limit``)."""
    with session_scope() as session:
        return report_drafts.purge_candidates(session, settings, limit=limit)


#: Studies one scheduled pass purges at most: the router's loop also dispatches jobs, so a
#: pass stays short and the next one follows at once while there is more to take.
BATCH = 20


def purge(settings: Settings, *, limit: int | None = None) -> list[dicom_listener.Purged]:
    """Purge the studies the policy lets go (at most ``limit``); those that became needed
    meanwhile stay."""
    done = []
    for verdict in candidates(settings, limit):

        def still(session: Session, study_pk: int) -> bool:
            return report_drafts.still_purgeable(session, settings, study_pk)

        def record(session: Session, purged: dicom_listener.Purged) -> None:
            report_drafts.record_purge(session, purged, retention_days=settings.retention_days)

        purged = dicom_listener.purge_study(
            verdict.study_pk, still_purgeable=still, record=record, settings=settings
        )
        if purged is not None:
            done.append(purged)
    if done:
        log.info(
            "retention purge %s",
            kv(studies=len(done), bytes=sum(p.bytes for p in done)),
        )
    return done


class PurgeSchedule:
    """Runs :func:`purge` at most every ``retention_interval_seconds`` (when retention is on)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.next_at = time.monotonic()

    def purge_if_due(self) -> list[dicom_listener.Purged]:
        if self.settings.retention_days <= 0 or time.monotonic() < self.next_at:
            return []
        done = purge(self.settings, limit=BATCH)
        # A full batch means more may be waiting: the next pass soon, not an interval later.
        wait = 1.0 if len(done) >= BATCH else self.settings.retention_interval_seconds
        self.next_at = time.monotonic() + wait
        return done

"""Finding the prior study for the comparison stage (CXRTrek stage 5).

The most recent earlier eligible chest radiograph of the same patient: first from RadDraft's own
archive; else, when a PACS is configured for query, by C-FIND and C-MOVE into the archive within
``prior_timeout_seconds``. A prior is a help, not a need: every failure here ends in "no prior,
because ..." recorded with the draft, never in a failed draft.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

import dicom_listener
import report_drafts
from peers.dicom_scu import ScuError, find_prior_studies, move_study
from raddraft.db import session_scope
from raddraft.logging import kv
from raddraft.settings import Settings
from report_drafts import SIGNED_STATES
from worker.tables import RetrievedPrior

log = logging.getLogger(__name__)

__all__ = ["PriorChoice", "find_prior", "frontal_first", "is_retrieved_prior"]


@dataclass(frozen=True)
class PriorChoice:
    """The prior used for a draft, or why there is none."""

    source: str  # "archive" | "pacs" | "none"
    why: str = ""
    study_instance_uid: str | None = None
    study_date: str = ""
    images: list[dicom_listener.ArchivedImage] = field(default_factory=list)
    report_text: str | None = None  # the prior's signed report, when RadDraft has one
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "why": self.why,
            "study_instance_uid": self.study_instance_uid,
            "study_date": self.study_date,
            "sop_instance_uids": [image.sop_instance_uid for image in self.images],
            "signed_report": self.report_text is not None,
            "seconds": round(self.seconds, 3),
        }


def frontal_first(images: list[dicom_listener.ArchivedImage]) -> list[dicom_listener.ArchivedImage]:
    """Frontal views first (the model reads the first image as the main one), stable order."""
    return sorted(images, key=lambda image: not image.frontal)


def find_prior(settings: Settings, current: dicom_listener.StudyInfo) -> PriorChoice:
    """The prior for ``current``: archive first, then the query PACS, else none with a reason."""
    started = time.monotonic()
    with session_scope() as session:
        choice = _from_archive(session, current)
    if choice is None and settings.query_pacs is not None:
        choice = _from_pacs(settings, current, deadline=started + settings.prior_timeout_seconds)
    if choice is None:
        why = "no earlier eligible chest radiograph in the archive"
        if settings.query_pacs is None:
            why += "; no PACS configured for query"
        choice = PriorChoice(source="none", why=why)
    return PriorChoice(**{**choice.__dict__, "seconds": time.monotonic() - started})


def _from_archive(session: Session, current: dicom_listener.StudyInfo) -> PriorChoice | None:
    candidates = dicom_listener.prior_versions(
        session,
        patient_id=current.patient_id,
        issuer_of_patient_id=current.issuer_of_patient_id,
        before_study_date=current.study_date or None,
        exclude_study_instance_uid=current.study_instance_uid,
    )
    for prior in candidates:
        images = _frontal_images(session, prior.study_version_pk)
        if images:
            return PriorChoice(
                source="archive",
                study_instance_uid=prior.study_instance_uid,
                study_date=prior.study_date,
                images=images,
                report_text=_signed_report_text(session, prior.study_version_pk),
            )
    return None


def _frontal_images(session: Session, study_version_pk: int) -> list[dicom_listener.ArchivedImage]:
    """The prior's first frontal image: progression compares one prior view with the current."""
    images = frontal_first(dicom_listener.version_images(session, study_version_pk))
    return images[:1]


def _signed_report_text(session: Session, study_version_pk: int) -> str | None:
    report = report_drafts.report_for_study_version(session, study_version_pk)
    if report is None or report.state not in SIGNED_STATES:
        return None
    return report_drafts.report_text(report_drafts.current_content(session, report))


def _from_pacs(
    settings: Settings, current: dicom_listener.StudyInfo, *, deadline: float
) -> PriorChoice | None:
    node = settings.query_pacs
    assert node is not None
    try:
        found = find_prior_studies(
            node,
            calling_ae=settings.ae_title,
            patient_id=current.patient_id,
            before_date=current.study_date or time.strftime("%Y%m%d"),
            before_time=current.study_time or None,
            exclude_study_uid=current.study_instance_uid,
            timeout=max(deadline - time.monotonic(), 1.0),
        )
        if not found:
            return PriorChoice(source="none", why=f"no earlier study in the archive or at {node}")
        newest = found[0]
        with session_scope() as session:
            if session.get(RetrievedPrior, newest.study_instance_uid) is None:
                session.add(
                    RetrievedPrior(
                        study_instance_uid=newest.study_instance_uid,
                        for_study_version_pk=current.study_version_pk,
                        source=str(node),
                    )
                )
        outcome = move_study(
            node,
            newest.study_instance_uid,
            calling_ae=settings.ae_title,
            destination_ae=settings.ae_title,
            timeout=max(deadline - time.monotonic(), 1.0),
        )
    except ScuError as error:
        log.warning("prior query failed %s", kv(pacs=str(node), error=str(error)))
        return PriorChoice(source="none", why=f"prior query at {node} failed: {error}")
    with session_scope() as session:
        images = _study_frontal_images(session, newest.study_instance_uid)
    if not images:
        return PriorChoice(
            source="none",
            why=f"C-MOVE of {newest.study_instance_uid} from {node} brought no frontal image "
            f"(completed {outcome.completed}, failed {outcome.failed})",
        )
    log.info(
        "prior retrieved %s",
        kv(study=newest.study_instance_uid, pacs=str(node), images=outcome.completed),
    )
    return PriorChoice(
        source="pacs",
        study_instance_uid=newest.study_instance_uid,
        study_date=newest.study_date,
        images=images,
    )


def _study_frontal_images(session: Session, study_uid: str) -> list[dicom_listener.ArchivedImage]:
    """Images of a study that arrived by C-MOVE, which need not be complete yet."""
    version_pk = dicom_listener.latest_version_pk(session, study_uid)
    return [] if version_pk is None else _frontal_images(session, version_pk)


def is_retrieved_prior(session: Session, study_uid: str) -> bool:
    """True for a study RadDraft fetched only to compare with (never drafted itself)."""
    return session.get(RetrievedPrior, study_uid) is not None

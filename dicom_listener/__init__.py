"""RadDraft's DICOM listener: receives chest X-ray studies, archives them, knows when they are done.

The listener itself runs as ``raddraft listen`` (:class:`dicom_listener.scp.Listener`). Other
parts of RadDraft use only the names below.

Reading the archive (the worker, the web app)::

    version_images(session, study_version_pk, *, archive_dir=None, policy=None)
        -> list[ArchivedImage]  (only the images the model may read)
        every image of the study up to that version: absolute path, SOP Instance UID, view
        position / view code, laterality, rows, columns, photometric interpretation, ...
    study_for_version(session, study_version_pk) -> StudyInfo
        the version with its study (UID, accession, date, description, indication, priority)
        and patient (ID, issuer, name, birth date, sex); LookupError when unknown
    prior_versions(session, *, patient_id, issuer_of_patient_id="", before_study_date=None,
                   exclude_study_instance_uid=None) -> list[StudyInfo]
        the patient's other complete, eligible studies (latest version each), newest first
    latest_version_pk(session, study_instance_uid) -> int | None
        the newest version of a study, complete or not
    instance_conflicts(session, *, limit=100, since=None) -> list[ConflictInfo]
        SOP Instance UIDs received again with other content (which attributes differed,
        stored and received values, who sent it, the quarantined copy), newest first; for
        administrators (``raddraft studies conflicts``)
    Patient, Study, StudyVersion, Series, Instance, IngestEvent, InstanceConflict
    (+ IngestEventKind, VersionState)
        the archive's tables, for read-only joins (the worklist, the queue page); only the
        listener writes them

Putting instances in (priors fetched by C-MOVE simply arrive through the SCP; STOW-RS hands its
parts here)::

    complete_study(study_instance_uid, *, settings=None) -> list[Completed]
    ingest_batch(items, *, calling_ae_title, peer="", settings=None) -> list[IngestResult]
        several DICOM files as one push (DICOMweb STOW-RS): each filed as the C-STORE SCP
        files one, then the two-view studies complete at once, as at an association's release

``IngestResult.status`` is the C-STORE status the listener would have answered (0x0000 stored or
already stored, 0xA700 refused for resources, 0xA900/0xC000 quarantined, 0x0111 the UID is
archived with other content: quarantined and recorded as a conflict).

Retention (the policy, which knows reports and exports, lives with them; it is asked again
inside the purge's transaction)::

    archived_study(session, study_pk) -> Purged      what a purge would take (a dry run)
    purge_study(study_pk, *, still_purgeable, record, settings=None) -> Purged | None
        instance rows out (with an ``ingest_events`` row and the caller's audit record in the
        same transaction), then the files; never while a version is open

Patient identity (:mod:`dicom_listener.identity`): patients are keyed on Patient ID and Issuer
of Patient ID; a study whose header gives another name, birth date or sex has an
``IdentityConflict``::

    identity_conflict(session, study_pk) -> IdentityConflict | None
    open_identity_conflicts(session, limit=100) -> list[IdentityConflict]
    resolve_identity_conflict(session, conflict_id, *, by, resolution) -> IdentityConflict

A complete, eligible study version gets exactly one job
:class:`raddraft.job_contract.DraftStudy` (by task name: the listener knows no worker).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy.orm import Session

from dicom_listener.archive_reads import (
    ArchivedImage,
    StudyInfo,
    latest_version_pk,
    prior_versions,
    study_for_version,
    version_images,
)
from dicom_listener.completion import Completed, complete_pushed
from dicom_listener.completion import complete_study as _complete
from dicom_listener.conflicts import ConflictInfo, instance_conflicts
from dicom_listener.eligibility import is_frontal
from dicom_listener.identity import (
    identity_conflict,
    open_identity_conflicts,
    resolve_identity_conflict,
)
from dicom_listener.ingest import Ingester, IngestResult, Origin, Outcome, Status
from dicom_listener.purge import Purged, RecordPurge, StillPurgeable, archived
from dicom_listener.purge import purge_study as _purge_study
from dicom_listener.tables import (
    IdentityConflict,
    IngestEvent,
    IngestEventKind,
    Instance,
    InstanceConflict,
    Patient,
    Series,
    Study,
    StudyVersion,
    VersionState,
)
from raddraft.db import engine_for
from raddraft.settings import Settings, get_settings

__all__ = [
    "ArchivedImage",
    "Completed",
    "ConflictInfo",
    "IdentityConflict",
    "IngestEvent",
    "IngestEventKind",
    "IngestResult",
    "Instance",
    "InstanceConflict",
    "Outcome",
    "Patient",
    "Purged",
    "RecordPurge",
    "Series",
    "Status",
    "StillPurgeable",
    "Study",
    "StudyInfo",
    "StudyVersion",
    "VersionState",
    "archived_study",
    "complete_study",
    "identity_conflict",
    "ingest_batch",
    "instance_conflicts",
    "is_frontal",
    "latest_version_pk",
    "open_identity_conflicts",
    "prior_versions",
    "purge_study",
    "resolve_identity_conflict",
    "study_for_version",
    "version_images",
]

log = logging.getLogger(__name__)

_PREAMBLE_END = 132  # 128-byte preamble + "DICM" (PS3.10 7.1)


def _ingester(settings: Settings | None) -> Ingester:
    settings = settings or get_settings()
    ingester = Ingester(settings, engine_for(settings.database_url))
    ingester.archive.tmp.mkdir(parents=True, exist_ok=True)
    return ingester


def _ingest_one(ingester: Ingester, data: bytes, origin: Origin) -> IngestResult:
    return ingester.ingest_spool(ingester.archive.spool_bytes(data), origin)


def ingest_batch(
    items: Iterable[bytes],
    *,
    calling_ae_title: str,
    peer: str = "",
    settings: Settings | None = None,
) -> list[IngestResult]:
    """File DICOM files (PS3.10) received as one push, then complete its two-view studies.

    This is the STOW-RS store transaction's filing (PS3.18 10.5): each instance gets the
    C-STORE SCP's treatment (watermark, header check, quarantine, fsync + rename + commit
    before its result exists), and the end of the request plays the part of an association's
    release (:func:`dicom_listener.completion.complete_pushed`). Items that are not DICOM files
    (no ``DICM`` prefix) are quarantined as unreadable (0xC000), never guessed at.
    """
    ingester = _ingester(settings)
    origin = Origin(calling_ae_title=calling_ae_title, peer=peer)
    results = []
    for data in items:
        if data[128:_PREAMBLE_END] != b"DICM":
            spool = ingester.archive.spool_bytes(data)
            why = "not a DICOM file (PS3.10 preamble and DICM prefix missing)"
            results.append(ingester.quarantine(spool, origin, Status.cannot_understand, why))
            continue
        results.append(_ingest_one(ingester, data, origin))
    stored = {r.study_instance_uid for r in results if r.status == Status.success}
    if stored:
        try:
            complete_pushed(ingester.engine, stored)
        except Exception:
            # The completion timer covers these studies too; a failure only costs latency.
            log.exception("completion after a batch failed")
    return results


def complete_study(study_instance_uid: str, *, settings: Settings | None = None) -> list[Completed]:
    """Force completion of the study's open version now (``raddraft study complete``)."""
    settings = settings or get_settings()
    return _complete(engine_for(settings.database_url), study_instance_uid)


def archived_study(session: Session, study_pk: int) -> Purged:
    """What the archive holds of a study (what a purge would take)."""
    return archived(session, study_pk)


def purge_study(
    study_pk: int,
    *,
    still_purgeable: StillPurgeable,
    record: RecordPurge,
    settings: Settings | None = None,
) -> Purged | None:
    """Take a study's instances out of the archive if ``still_purgeable`` agrees (see
    :mod:`dicom_listener.purge`); None when it does not, or nothing was archived."""
    settings = settings or get_settings()
    return _purge_study(
        engine_for(settings.database_url),
        settings.archive_dir,
        study_pk,
        still_purgeable=still_purgeable,
        record=record,
    )

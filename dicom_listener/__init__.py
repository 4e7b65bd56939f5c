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
    Patient, Study, StudyVersion, Series, Instance, IngestEvent (+ IngestEventKind,
    VersionState)
        the archive's tables, for read-only joins (the worklist, the queue page); only the
        listener writes them

Putting instances in (priors fetched by C-MOVE simply arrive through the SCP; these are for
instances obtained another way, e.g. C-GET or a file)::

    ingest_bytes(data, *, transfer_syntax_uid=None, calling_ae_title="LOCAL", settings=None)
        -> IngestResult      (a DICOM file's bytes, or a bare data set plus its syntax)
    store_file(path, *, calling_ae_title="LOCAL", settings=None) -> IngestResult
    complete_study(study_instance_uid, *, settings=None) -> list[Completed]
    ingest_batch(items, *, calling_ae_title, peer="", settings=None) -> list[IngestResult]
        several instances as one push (DICOMweb STOW-RS): each filed like ``ingest_bytes``,
        then the two-view studies complete at once, as at an association's release

``IngestResult.status`` is the C-STORE status the listener would have answered (0x0000 stored or
already stored, 0xA700 refused for resources, 0xA900/0xC000 quarantined).

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
from pathlib import Path

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
    "IdentityConflict",
    "IngestEvent",
    "IngestEventKind",
    "IngestResult",
    "Instance",
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
    "ingest_bytes",
    "latest_version_pk",
    "open_identity_conflicts",
    "prior_versions",
    "purge_study",
    "resolve_identity_conflict",
    "store_file",
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


def ingest_bytes(
    data: bytes,
    *,
    transfer_syntax_uid: str | None = None,
    calling_ae_title: str = "LOCAL",
    settings: Settings | None = None,
) -> IngestResult:
    """File one instance from bytes, exactly as the C-STORE SCP files a received one.

    ``data`` is either a DICOM file (preamble, ``DICM``, file meta) stored as given, or a bare
    data set, for which ``transfer_syntax_uid`` is required and file meta is added.
    """
    ingester = _ingester(settings)
    origin = Origin(calling_ae_title=calling_ae_title, peer="local")
    return _ingest_one(ingester, data, transfer_syntax_uid, origin)


def _ingest_one(
    ingester: Ingester, data: bytes, transfer_syntax_uid: str | None, origin: Origin
) -> IngestResult:
    if data[128:_PREAMBLE_END] == b"DICM":
        spool = ingester.archive.spool_bytes(data)
    else:
        if not transfer_syntax_uid:
            raise ValueError("a bare data set needs its transfer_syntax_uid")
        spool = ingester.archive.spool_bytes(_file_meta_for(data, transfer_syntax_uid), data)
    return ingester.ingest_spool(spool, origin)


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
        results.append(_ingest_one(ingester, data, None, origin))
    stored = {r.study_instance_uid for r in results if r.status == Status.success}
    if stored:
        try:
            complete_pushed(ingester.engine, stored)
        except Exception:
            # The completion timer covers these studies too; a failure only costs latency.
            log.exception("completion after a batch failed")
    return results


def store_file(
    path: str | Path, *, calling_ae_title: str = "LOCAL", settings: Settings | None = None
) -> IngestResult:
    """File the DICOM file at ``path`` (it is copied, not moved)."""
    return ingest_bytes(
        Path(path).read_bytes(), calling_ae_title=calling_ae_title, settings=settings
    )


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


def _file_meta_for(dataset: bytes, transfer_syntax_uid: str) -> bytes:
    """Preamble and file meta (PS3.10 7.1) for a bare data set, from its own SOP UIDs."""
    import zlib
    from io import BytesIO

    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        UID,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ImplicitVRLittleEndian,
    )

    syntax = UID(transfer_syntax_uid)
    head = dataset[: 1 << 16]
    if syntax == DeflatedExplicitVRLittleEndian:
        head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(dataset, 1 << 16)
    header = read_dataset(
        BytesIO(head),
        is_implicit_VR=syntax == ImplicitVRLittleEndian,
        is_little_endian=syntax != ExplicitVRBigEndian,
        stop_when=lambda tag, *_: tag > 0x00080018,
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(header.get("SOPClassUID", "")))
    meta.MediaStorageSOPInstanceUID = UID(str(header.get("SOPInstanceUID", "")))
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()

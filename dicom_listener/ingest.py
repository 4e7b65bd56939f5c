"""Filing one received instance: parse, check, place durably, record; the status to answer.

This is the C-STORE SCP's work (PS3.4 B.2.2) without the network: the SCP hands over a spool
file that already holds the bytes as received, and so does :func:`dicom_listener.ingest_batch`
for the parts of a STOW-RS request. Order, per instance:

1. refuse (0xA700, out of resources) above the disk watermark;
2. check the bounds (:mod:`dicom_listener.limits`: too large or inflating too far -> 0xA700,
   refused; nested too deep or lying lengths -> 0xC000, quarantined), then parse the header
   only; unreadable -> 0xC000, identifiers missing -> 0xA900, quarantined;
3. already recorded with its file present -> 0x0000, the new copy dropped (stored once);
4. fsync, rename into ``archive/<Study>/<Series>/<SOP>.dcm``, fsync the folder;
5. one transaction: patient, study, series, open study version, instance, ingest event;
6. only then 0x0000. If step 5 fails the file is removed again (unless a concurrent
   association recorded the same instance meanwhile) and the answer is 0xA700, so the sender
   retries later: no acknowledged instance is ever missing, no row points at nothing.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from dicom_listener import conflicts
from dicom_listener.archive import Archive
from dicom_listener.header import (
    IncompleteDataset,
    InstanceHeader,
    UnreadableDataset,
    read_header,
)
from dicom_listener.identity import check_identity
from dicom_listener.limits import Limits, OverLimit
from dicom_listener.tables import (
    IngestEvent,
    IngestEventKind,
    Instance,
    Patient,
    Series,
    Study,
    StudyVersion,
    VersionState,
)
from raddraft.db import session_scope, utcnow
from raddraft.logging import kv
from raddraft.settings import Settings

log = logging.getLogger(__name__)


class Status(enum.IntEnum):
    """C-STORE response statuses used here (PS3.4 Table B.2-1, PS3.7 C.4)."""

    success = 0x0000
    out_of_resources = 0xA700  # "Refused: Out of Resources": the sender should retry
    dataset_mismatch = 0xA900  # "Error: Data Set does not match SOP Class"
    duplicate_conflict = 0x0111  # "Failure: Duplicate SOP Instance" (PS3.7 C.4.2), not retried
    cannot_understand = 0xC000  # "Error: Cannot understand"


class Outcome(enum.StrEnum):
    stored = "stored"
    duplicate = "duplicate"
    refused = "refused"
    quarantined = "quarantined"
    conflict = "conflict"  # the UID is archived with other content: new copy quarantined


@dataclass(frozen=True)
class IngestResult:
    """What happened to one instance, and the status to answer the sender."""

    status: int
    outcome: Outcome
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    path: Path | None = None
    reason: str = ""
    patient_id: str = ""
    sop_class_uid: str = ""
    #: A refusal that passes (disk, database, archive write): sending again later can work.
    #: An over-limit data set is refused too (0xA700) but never with this set.
    transient: bool = False


@dataclass(frozen=True)
class Origin:
    """Where an instance came from, for the log and the ingest event."""

    calling_ae_title: str = ""
    peer: str = ""
    affected_sop_instance_uid: str = ""  # from the C-STORE command, when there is one
    affected_sop_class_uid: str = ""
    #: The presentation context's abstract syntax the C-STORE came on (PS3.8 7.1.1.13).
    context_sop_class_uid: str = ""


class Ingester:
    """Files instances into one data directory's archive and database."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.archive = Archive(settings.archive_dir, settings.quarantine_dir)
        self.limits = Limits.from_settings(settings)

    # -- the steps ---------------------------------------------------------------------------

    def ingest_spool(self, spool: Path, origin: Origin, size: int | None = None) -> IngestResult:
        """File the complete DICOM file at ``spool`` (in ``archive/.tmp``); it is consumed."""
        try:
            return self._ingest(spool, origin, spool.stat().st_size if size is None else size)
        finally:
            # Whatever path was taken, the spool must not outlive this call (crash aside).
            spool.unlink(missing_ok=True)

    def _ingest(self, spool: Path, origin: Origin, size: int) -> IngestResult:  # noqa: C901 (one linear path per C-STORE outcome (PS3.4 B.2.3), kept in one place to read)
        started = time.perf_counter()
        disk = self.archive.disk_state(
            self.settings.disk_watermark_percent, self.settings.disk_min_free_mb
        )
        if disk.full:
            return self.refuse(origin, disk.why, size)

        try:
            header = read_header(spool, self.limits)
        except OverLimit as error:
            if error.status == Status.out_of_resources:
                # Too large to keep, even in quarantine: refused, the sender still has it.
                return self.refuse(origin, str(error), size, transient=False)
            return self._quarantine(spool, origin, Status.cannot_understand, str(error), size)
        except UnreadableDataset as error:
            return self._quarantine(spool, origin, Status.cannot_understand, str(error), size)
        except IncompleteDataset as error:
            return self._quarantine(spool, origin, Status.dataset_mismatch, str(error), size)
        mismatch = _context_mismatch(header, origin)
        if mismatch:
            return self._quarantine(spool, origin, Status.dataset_mismatch, mismatch, size)

        _neutralise_preamble(spool)
        relative = self.archive.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        try:
            differences = self._stored_differences(header)
            if differences:
                return self._conflict(spool, origin, header, differences, size)
            if differences is not None:
                self._event(IngestEventKind.duplicate, origin, header, Status.success, size)
                log.info(
                    "duplicate instance, already stored %s",
                    kv(sop=header.sop_instance_uid, calling=origin.calling_ae_title),
                )
                return IngestResult(
                    Status.success,
                    Outcome.duplicate,
                    header.sop_instance_uid,
                    header.study_instance_uid,
                    self.archive.absolute(relative),
                )
        except SQLAlchemyError as error:
            return self.refuse(origin, f"database unavailable: {error.__class__.__name__}", size)

        try:
            self.archive.place(spool, relative)
        except OSError as error:
            return self.refuse(origin, f"archive write failed: {error}", size)

        try:
            recorded = self._record(header, relative, size, origin)
        except Exception as error:
            if not self._already_stored_quietly(header.sop_instance_uid):
                try:
                    self.archive.remove(relative)
                except OSError:
                    log.exception("could not remove unrecorded file %s", kv(path=relative))
            return self.refuse(origin, f"database write failed: {error.__class__.__name__}", size)

        outcome = Outcome.stored if recorded else Outcome.duplicate
        log.info(
            "%s %s",
            outcome.value,
            kv(
                sop=header.sop_instance_uid,
                study=header.study_instance_uid,
                view=header.view_position or header.view_code or "-",
                ts=header.transfer_syntax_uid,
                bytes=size,
                calling=origin.calling_ae_title,
                ms=round((time.perf_counter() - started) * 1000, 1),
            ),
        )
        return IngestResult(
            Status.success,
            outcome,
            header.sop_instance_uid,
            header.study_instance_uid,
            self.archive.absolute(relative),
            patient_id=header.patient_id,
            sop_class_uid=header.sop_class_uid,
        )

    def _stored_differences(self, header: InstanceHeader) -> dict[str, dict[str, object]] | None:
        """None when the instance is not archived (no row, or its file is gone); else what
        differs between the archived instance and ``header`` (empty: the same instance)."""
        with Session(self.engine) as session:
            path = session.scalar(
                select(Instance.path).where(Instance.sop_instance_uid == header.sop_instance_uid)
            )
            if path is None or not self.archive.absolute(path).exists():
                return None
            return conflicts.differences(session, header) or {}

    def _conflict(
        self,
        spool: Path,
        origin: Origin,
        header: InstanceHeader,
        differences: dict[str, dict[str, object]],
        size: int,
    ) -> IngestResult:
        """The UID is archived with other content: keep the archived instance, quarantine the
        new copy, record which attributes differ (``instance_conflicts``, an ingest event) and
        answer 0x0111 "duplicate SOP instance" (PS3.7 C.4.2), a failure the sender does not
        retry; answering success would tell it the other content is stored."""
        status = Status.duplicate_conflict
        names = ", ".join(sorted(differences))
        why = f"SOP Instance UID already archived with other content: {names} differ"
        try:
            where = str(
                self.archive.quarantine(
                    spool,
                    why,
                    name=header.sop_instance_uid,
                    context=kv(calling=origin.calling_ae_title, peer=origin.peer),
                )
            )
        except OSError:
            log.exception("could not quarantine a conflicting instance")
            where = ""
        log.error(
            "C-STORE failed, duplicate SOP instance with other content %s",
            kv(sop=header.sop_instance_uid, differ=names, calling=origin.calling_ae_title),
        )
        try:
            with session_scope(self.engine) as session:
                conflicts.record(
                    session,
                    header,
                    differences,
                    calling_ae_title=origin.calling_ae_title,
                    peer=origin.peer,
                    quarantined=where,
                )
                event = _ingest_event(IngestEventKind.conflict, origin, header, status, size, why)
                event.detail = {"why": why, "differences": differences}
                session.add(event)
        except SQLAlchemyError:
            log.warning("could not record the conflict", exc_info=True)
        return IngestResult(
            status,
            Outcome.conflict,
            header.sop_instance_uid,
            header.study_instance_uid,
            Path(where) if where else None,
            reason=why,
        )

    def _already_stored(self, sop_instance_uid: str) -> bool:
        """True when the instance has a row and its file is in place."""
        with Session(self.engine) as session:
            path = session.scalar(
                select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid)
            )
        return path is not None and self.archive.absolute(path).exists()

    def _already_stored_quietly(self, sop_instance_uid: str) -> bool:
        try:
            return self._already_stored(sop_instance_uid)
        except SQLAlchemyError:
            return False

    def _record(self, header: InstanceHeader, relative: str, size: int, origin: Origin) -> bool:
        """Write the rows in one transaction; False when the instance was recorded already.

        Unique constraints settle races between associations (and listener processes): the
        loser of an insert race rolls back and tries again, then finds the winner's row.
        """
        for attempt in range(5):
            try:
                with session_scope(self.engine) as session:
                    return _record_instance(session, header, relative, size, origin)
            except (IntegrityError, OperationalError) as error:
                # IntegrityError: a concurrent insert of the same patient/study/series/version;
                # OperationalError: SQLite busy or a PostgreSQL serialization hiccup.
                if attempt == 4:
                    raise
                log.debug("retrying instance record %s", kv(attempt=attempt, error=type(error)))
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- failures ----------------------------------------------------------------------------

    def refuse(
        self, origin: Origin, why: str, size: int, *, transient: bool = True
    ) -> IngestResult:
        """Answer 0xA700 (out of resources, PS3.4 B.2.3): the sender keeps it and retries."""
        log.warning(
            "C-STORE refused, out of resources %s",
            kv(why=why, sop=origin.affected_sop_instance_uid, calling=origin.calling_ae_title),
        )
        self._event_quietly(
            IngestEventKind.refused, origin, None, Status.out_of_resources, size, why
        )
        return IngestResult(
            Status.out_of_resources,
            Outcome.refused,
            origin.affected_sop_instance_uid,
            reason=why,
            transient=transient,
        )

    def quarantine(self, spool: Path, origin: Origin, status: Status, why: str) -> IngestResult:
        """Quarantine the spool file without parsing it (a caller already knows it is bad)."""
        try:
            return self._quarantine(spool, origin, status, why, spool.stat().st_size)
        finally:
            spool.unlink(missing_ok=True)

    def _quarantine(
        self, spool: Path, origin: Origin, status: Status, why: str, size: int
    ) -> IngestResult:
        context = kv(
            calling=origin.calling_ae_title,
            peer=origin.peer,
            affected_sop_instance_uid=origin.affected_sop_instance_uid,
            affected_sop_class_uid=origin.affected_sop_class_uid,
            status=f"0x{status:04X}",
        )
        try:
            where: Path | None = self.archive.quarantine(
                spool, why, name=origin.affected_sop_instance_uid, context=context
            )
        except OSError:
            log.exception("could not quarantine a bad dataset")
            where = None
        log.error(
            "C-STORE failed, dataset quarantined %s",
            kv(
                why=why,
                status=f"0x{status:04X}",
                sop=origin.affected_sop_instance_uid,
                calling=origin.calling_ae_title,
                file=where,
            ),
        )
        self._event_quietly(IngestEventKind.quarantined, origin, None, status, size, why)
        return IngestResult(
            status, Outcome.quarantined, origin.affected_sop_instance_uid, path=where, reason=why
        )

    def _event(
        self,
        kind: IngestEventKind,
        origin: Origin,
        header: InstanceHeader | None,
        status: int,
        size: int,
        why: str = "",
    ) -> None:
        with session_scope(self.engine) as session:
            session.add(_ingest_event(kind, origin, header, status, size, why))

    def _event_quietly(self, *args: object) -> None:
        """Record an event when the database lets us; a failure must not change the answer."""
        try:
            self._event(*args)  # type: ignore[arg-type]
        except Exception:
            log.warning("could not record ingest event", exc_info=True)


def _context_mismatch(header: InstanceHeader, origin: Origin) -> str:
    """Why the data set is not what its C-STORE and presentation context say it is (0xA900,
    "data set does not match SOP class", PS3.4 B.2.3), or "".

    The data set's SOP Class and Instance UIDs must be the command's Affected ones (PS3.7
    9.1.1.1), the Affected SOP Class the context's abstract syntax (PS3.8 7.1.1.13), and a
    Part 10 file's MediaStorageSOPClassUID its SOP Class (PS3.10 7.1): a CT data set sent in a
    DX context would otherwise be archived and served as a DX image.
    """
    command_uid = origin.affected_sop_instance_uid
    if command_uid and command_uid != header.sop_instance_uid:
        return (
            f"SOPInstanceUID {header.sop_instance_uid} differs from the command's "
            f"AffectedSOPInstanceUID {command_uid}"
        )
    affected = origin.affected_sop_class_uid
    if affected and affected != header.sop_class_uid:
        return (
            f"data set does not match SOP class: its SOPClassUID {header.sop_class_uid} is not "
            f"the command's AffectedSOPClassUID {affected}"
        )
    context = origin.context_sop_class_uid
    if context and affected and context != affected:
        return (
            f"data set does not match SOP class: AffectedSOPClassUID {affected} is not the "
            f"presentation context's abstract syntax {context}"
        )
    media = header.media_storage_sop_class_uid
    if media and media != header.sop_class_uid:
        return (
            f"data set does not match SOP class: its SOPClassUID {header.sop_class_uid} is not "
            f"the file meta's MediaStorageSOPClassUID {media}"
        )
    return ""


def _neutralise_preamble(spool: Path) -> None:
    """Zero a non-zero 128-byte preamble before the file enters the archive.

    The preamble is no part of the data set (PS3.10 7.1) and never travels over DIMSE, but a
    Part 10 file handed to :func:`dicom_listener.ingest_batch` (STOW-RS) may carry one making it a
    polyglot (a Windows executable, HTML, a shell script, a ZIP) which a later download would
    hand to another program. PS3.10 7.5 leaves the preamble's use to application profiles;
    RadDraft's archive uses none, so it is all zeros.
    """
    with spool.open("r+b") as file:
        preamble = file.read(128)
        if len(preamble) == 128 and preamble.strip(b"\0") and file.read(4) == b"DICM":
            file.seek(0)
            file.write(b"\0" * 128)
            log.warning("non-zero file preamble replaced by zeros %s", kv(file=spool.name))


def _ingest_event(
    kind: IngestEventKind,
    origin: Origin,
    header: InstanceHeader | None,
    status: int | None,
    size: int,
    why: str = "",
) -> IngestEvent:
    return IngestEvent(
        kind=kind.value,
        calling_ae_title=origin.calling_ae_title[:16],
        peer=origin.peer[:64],
        study_instance_uid=header.study_instance_uid if header else "",
        sop_instance_uid=(header.sop_instance_uid if header else origin.affected_sop_instance_uid)[
            :64
        ],
        status=status,
        size_bytes=size,
        detail={"why": why} if why else {},
    )


def _record_instance(
    session: Session, header: InstanceHeader, relative: str, size: int, origin: Origin
) -> bool:
    """Insert or update the rows for one instance inside the caller's transaction."""
    now = utcnow()
    existing = session.scalar(
        select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)
    )
    if existing is not None:
        # Recorded meanwhile (or the file had gone missing and was written again).
        session.add(_ingest_event(IngestEventKind.duplicate, origin, header, Status.success, size))
        return False

    patient = session.scalar(
        select(Patient).where(
            Patient.patient_id == header.patient_id,
            Patient.issuer_of_patient_id == header.issuer_of_patient_id,
        )
    )
    if patient is None:
        patient = Patient(
            patient_id=header.patient_id,
            issuer_of_patient_id=header.issuer_of_patient_id,
            patient_name=header.patient_name,
            birth_date=header.birth_date,
            sex=header.sex,
        )
        session.add(patient)
        session.flush()

    study = session.scalar(
        select(Study).where(Study.study_instance_uid == header.study_instance_uid)
    )
    if study is None:
        study = Study(
            study_instance_uid=header.study_instance_uid,
            patient_pk=patient.id,
            accession_number=header.accession_number,
            study_id=header.study_id,
            study_date=header.study_date,
            study_time=header.study_time,
            study_description=header.study_description,
            referring_physician=header.referring_physician,
            priority=header.priority,
            indication=header.indication,
            first_received_at=now,
            last_received_at=now,
        )
        session.add(study)
        session.flush()
    else:
        study.last_received_at = now
        # Later images may carry what the first lacked; the most urgent priority wins.
        study.priority = min(study.priority, header.priority)
        if header.indication and header.indication not in study.indication:
            study.indication = "; ".join(p for p in (study.indication, header.indication) if p)
        for name in ("accession_number", "study_description", "study_date", "study_time"):
            if not getattr(study, name) and getattr(header, name):
                setattr(study, name, getattr(header, name))

    # Same ID and issuer, other name/birth date/sex: flagged, never merged silently.
    check_identity(session, patient, study, header)

    series = session.scalar(
        select(Series).where(Series.series_instance_uid == header.series_instance_uid)
    )
    if series is None:
        series = Series(
            series_instance_uid=header.series_instance_uid,
            study_pk=study.id,
            modality=header.modality,
            series_number=header.series_number,
            series_description=header.series_description,
            body_part_examined=header.body_part_examined,
        )
        session.add(series)
        session.flush()

    version_pk = _open_version(session, study.id, now)
    session.add(
        Instance(
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_pk=series.id,
            version_pk=version_pk,
            instance_number=header.instance_number,
            transfer_syntax_uid=header.transfer_syntax_uid[:64],
            path=relative,
            size_bytes=size,
            view_position=header.view_position,
            view_code=header.view_code,
            image_type=header.image_type,
            presentation_intent=header.presentation_intent,
            image_laterality=header.image_laterality,
            rows=header.rows,
            columns=header.columns,
            photometric_interpretation=header.photometric_interpretation,
            calling_ae_title=origin.calling_ae_title[:16],
            received_at=now,
        )
    )
    session.add(_ingest_event(IngestEventKind.stored, origin, header, Status.success, size))
    session.flush()
    return True


def _open_version(session: Session, study_pk: int, now: object) -> int:
    """The study's open version, touched so the completion timer sees the new arrival.

    The conditional UPDATE is what makes completion race-free: the timer completes a version
    only ``WHERE state='open' AND last_instance_at=<what it read>``, so either this touch lands
    first (the timer's update then matches nothing) or the completion does (this update then
    matches nothing and a new version opens). PostgreSQL's row lock and SQLite's single writer
    both serialise the two.
    """
    open_pk = session.scalar(
        select(StudyVersion.id)
        .where(StudyVersion.study_pk == study_pk, StudyVersion.state == VersionState.open)
        .order_by(StudyVersion.number.desc())
        .limit(1)
    )
    if open_pk is not None:
        touched = session.execute(
            update(StudyVersion)
            .where(StudyVersion.id == open_pk, StudyVersion.state == VersionState.open)
            .values(last_instance_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if touched == 1:
            return int(open_pk)
    number = (
        session.scalar(
            select(func.max(StudyVersion.number)).where(StudyVersion.study_pk == study_pk)
        )
        or 0
    ) + 1
    version = StudyVersion(
        study_pk=study_pk,
        number=number,
        state=VersionState.open,
        opened_at=now,
        last_instance_at=now,
    )
    session.add(version)
    session.flush()  # unique (study_pk, number) turns a concurrent opener into a retry
    if number > 1:
        log.info("study version opened %s", kv(study_pk=study_pk, number=number))
    return int(version.id)

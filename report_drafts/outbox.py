"""The outbox: what leaves RadDraft for a report version, built once, and what was sent of it.

This is the one place the lifecycle calls the pure builders (:mod:`report_drafts.builders`: SR,
GSPS, HL7 ORU^R01, FHIR resources). Every object is built once, written to
``data_dir/outbox/`` and never changed; a :class:`SentObject` row per destination says where it
goes, and one job per destination (see :mod:`raddraft.job_contract`) sends it. The worker's
exporter claims what is still to send (:func:`report_drafts.delivery.claim_sends`), reads its
payload (:func:`outbox_file`) and records each attempt
(:func:`report_drafts.delivery.record_sent`). A retry therefore sends the same bytes, and
``raddraft trace`` can find the version from any identifier a receiver saw.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from dicom_listener import Instance, Patient, Series, Study, StudyVersion, identity_conflict
from raddraft import destinations, job_contract, jobs
from raddraft.numbers import IS_DIGITS, decimal
from raddraft.settings import Settings
from report_drafts.builders import (
    ImageRef,
    PatientRef,
    build_gsps,
    build_rejection_note,
    build_sr,
    device,
    device_uid_for,
    diagnostic_report,
    fhir_id_for,
    imaging_study,
    oru_r01,
    practitioner,
    provenance,
    resource_id_for,
)
from report_drafts.content import Algorithm, ReportContent
from report_drafts.states import SIGNED_STATES
from report_drafts.tables import (
    DraftRun,
    OutboxPayload,
    Report,
    ReportVersion,
    SentKind,
    SentObject,
    SentState,
)
from report_drafts.version_reads import algorithm_of, draft_run

log = logging.getLogger(__name__)


@dataclass
class BuiltDicom:
    """The DICOM objects made for one version, already written to the outbox."""

    sr_uid: str | None = None
    gsps_uids: list[str] = field(default_factory=list)
    files: list[tuple[SentKind, str, str]] = field(default_factory=list)  # kind, uid, path


def outbox_dir(settings: Settings) -> Path:
    return settings.data_dir / "outbox"


class OutboxPayloadError(FileNotFoundError):
    """An outbox object cannot be had: no payload row (and no local copy), or its bytes do not
    match the sha256 recorded when it was written."""


def outbox_file(settings: Settings, row: SentObject) -> Path:
    """Where the payload of ``row`` lies locally, materialised from the database if need be.

    A payload that cannot be had is logged and its (absent) path returned, so the send fails
    on that row (recorded, retried) instead of the claim failing for every row.
    """
    session = object_session(row)
    if session is None:
        return outbox_dir(settings) / row.path
    try:
        return materialise(session, settings, row.path)
    except OutboxPayloadError as error:
        log.error("%s", error)
        return outbox_dir(settings) / row.path


def materialise(session: Session, settings: Settings, relative: str) -> Path:
    """The local file of outbox object ``relative``; written from its database row if absent.

    The row's bytes are checked against its sha256 and written atomically (temp file, fsync,
    rename), so a reader never sees a partial file. Raises :class:`OutboxPayloadError`.
    """
    path = outbox_dir(settings) / relative
    if path.exists():
        return path
    payload = session.get(OutboxPayload, relative)
    if payload is None:
        raise OutboxPayloadError(f"outbox object {relative}: no payload in the database")
    data = bytes(payload.data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != payload.sha256 or len(data) != payload.size:
        raise OutboxPayloadError(
            f"outbox object {relative}: stored bytes do not match (sha256 {digest}, "
            f"{len(data)} bytes; recorded {payload.sha256}, {payload.size} bytes)"
        )
    _write_file(path, data, replace=True)
    return path


def _write_file(path: Path, data: bytes, *, replace: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if not replace and path.exists():
        tmp.unlink()
        raise FileExistsError(f"{path} exists; outbox objects are never rewritten")
    os.replace(tmp, path)


def _write_once(session: Session, settings: Settings, relative: str, data: bytes) -> None:
    """Record ``data`` as outbox object ``relative`` in the caller's transaction; never twice.

    The database row is the durable copy (it commits with the version that references it);
    the local file under ``data_dir/outbox/`` is a cache of it for this process.
    """
    if session.get(OutboxPayload, relative) is not None:
        raise FileExistsError(
            f"outbox object {relative} exists; outbox objects are never rewritten"
        )
    session.add(
        OutboxPayload(
            path=relative, data=data, sha256=hashlib.sha256(data).hexdigest(), size=len(data)
        )
    )
    session.flush()
    # A file left by a transaction that rolled back is only a stale cache: the row decides.
    _write_file(outbox_dir(settings) / relative, data, replace=True)


def _write_dataset(session: Session, settings: Settings, ds: Dataset) -> str:
    """Write ``ds`` once as ``<SOPInstanceUID>.dcm`` (PS3.10 file format) in the outbox."""
    relative = f"{ds.SOPInstanceUID}.dcm"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    _write_once(session, settings, relative, buffer.getvalue())
    return relative


def read_outbox_dataset(session: Session, settings: Settings, sop_instance_uid: str) -> Dataset:
    return pydicom.dcmread(materialise(session, settings, f"{sop_instance_uid}.dcm"))


def has_outbox_object(session: Session, settings: Settings, relative: str) -> bool:
    return (outbox_dir(settings) / relative).exists() or session.get(
        OutboxPayload, relative
    ) is not None


# --------------------------------------------------------------------------------------------
# Sources


def source_instances(session: Session, report: Report) -> list[Instance]:
    """The archived images a report reads: its study's instances up to its study version."""
    sv = session.get(StudyVersion, report.study_version_pk)
    assert sv is not None
    return list(
        session.scalars(
            select(Instance)
            .join(StudyVersion, StudyVersion.id == Instance.version_pk)
            .where(StudyVersion.study_pk == report.study_pk, StudyVersion.number <= sv.number)
            .order_by(Instance.id)
        )
    )


def load_sources(
    settings: Settings,
    instances: Sequence[Instance],
    source_files: Mapping[str, Path] | None = None,
) -> list[Dataset]:
    """Source headers from the archive (pixels are not needed to reference an image).

    A caller without the archive's disk passes ``source_files`` (SOP Instance UID -> a local
    copy): the worker hands over the images it read, wherever its image cache keeps them, so
    this module knows no other folder's file layout.
    """
    return [
        pydicom.dcmread(_source_path(settings, inst, source_files or {}), stop_before_pixels=True)
        for inst in instances
    ]


def _source_path(settings: Settings, instance: Instance, source_files: Mapping[str, Path]) -> Path:
    archived = settings.archive_dir / instance.path
    if archived.exists():
        return archived
    return source_files.get(instance.sop_instance_uid, archived)


# --------------------------------------------------------------------------------------------
# DICOM: SR and GSPS


def build_dicom(
    session: Session,
    settings: Settings,
    *,
    report: Report,
    content: ReportContent,
    algorithm: Algorithm,
    previous_sr_uid: str | None,
    source_files: Mapping[str, Path] | None = None,
) -> BuiltDicom:
    """Build the SR (and a GSPS per image with accepted boxes) for ``content``; write them.

    ``previous_sr_uid`` names the SR this one replaces (draft -> signed -> amended), read back
    from the outbox so PredecessorDocumentsSequence references it exactly. ``source_files``:
    see :func:`load_sources`.
    """
    sources = load_sources(settings, source_instances(session, report), source_files)
    if not sources:
        log.warning("report %s: no archived source images; no SR/GSPS", report.id)
        return BuiltDicom()
    previous = read_outbox_dataset(session, settings, previous_sr_uid) if previous_sr_uid else None
    built = BuiltDicom()
    number = report.current_version + 1  # the version these objects will belong to
    sr = build_sr(
        sources,
        content,
        algorithm,
        device_uid=device_uid_for(algorithm),
        series_instance_uid=_series_uid(report, "sr"),
        series_number=SR_SERIES_NUMBER,
        instance_number=number,
        institution=settings.institution_name,
        previous=previous,
    )
    built.sr_uid = str(sr.SOPInstanceUID)
    built.files.append((SentKind.sr, built.sr_uid, _write_dataset(session, settings, sr)))
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    boxed = [f for f in content.accepted_findings if f.box is not None and f.sop_instance_uid]
    for image_uid in dict.fromkeys(f.sop_instance_uid for f in boxed):
        if image_uid not in by_uid:
            log.warning("finding on unknown image %s skipped in GSPS", image_uid)
            continue
        presentation = build_gsps(
            by_uid[image_uid],
            content.findings,
            algorithm,
            series_instance_uid=_series_uid(report, "gsps"),
            series_number=GSPS_SERIES_NUMBER,
            instance_number=number,
            institution=settings.institution_name,
            signed=content.status.is_signed,
        )
        uid = str(presentation.SOPInstanceUID)
        built.gsps_uids.append(uid)
        built.files.append((SentKind.gsps, uid, _write_dataset(session, settings, presentation)))
    return built


# RadDraft's own series in the study: one for the SRs, one for the presentation states.
SR_SERIES_NUMBER = 9901
GSPS_SERIES_NUMBER = 9902


def _series_uid(report: Report, kind: str) -> str:
    """A stable series UID per report and object kind, so every version lands in one series."""
    return str(generate_uid(entropy_srcs=["raddraft-series", report.uid, kind]))


KOS_SERIES_NUMBER = 9903


def build_withdrawal_dicom(
    session: Session, settings: Settings, *, report: Report, reason: str
) -> BuiltDicom:
    """The IOCM rejection note withdrawing every SR and GSPS the report's versions built.

    Written to the outbox like the SR it withdraws; empty when the report built none.
    """
    uids: list[str] = []
    for row in session.scalars(
        select(ReportVersion)
        .where(ReportVersion.report_pk == report.id)
        .order_by(ReportVersion.number)
    ):
        uids.extend(u for u in [row.sr_sop_instance_uid, *row.gsps_sop_instance_uids] if u)
    withdrawn = [
        read_outbox_dataset(session, settings, uid)
        for uid in dict.fromkeys(uids)
        if has_outbox_object(session, settings, f"{uid}.dcm")
    ]
    if not withdrawn:
        return BuiltDicom()
    note = build_rejection_note(
        withdrawn,
        series_instance_uid=_series_uid(report, "kos"),
        series_number=KOS_SERIES_NUMBER,
        instance_number=report.current_version + 1,
        institution=settings.institution_name,
        reason=reason,
    )
    uid = str(note.SOPInstanceUID)
    return BuiltDicom(files=[(SentKind.kos, uid, _write_dataset(session, settings, note))])


# --------------------------------------------------------------------------------------------
# FHIR and HL7


@dataclass(frozen=True)
class VersionContext:
    """Everything a RIS message about one report version says, gathered from the tables."""

    report: Report
    version: ReportVersion
    content: ReportContent
    study: Study
    patient: Patient
    instances: list[Instance]
    algorithm: Algorithm
    issued: dt.datetime


def version_context(
    session: Session, version: ReportVersion, algorithm: Algorithm | None = None
) -> VersionContext:
    report = session.get(Report, version.report_pk)
    assert report is not None
    study = session.get(Study, report.study_pk)
    assert study is not None
    patient = session.get(Patient, study.patient_pk)
    assert patient is not None
    return VersionContext(
        report=report,
        version=version,
        content=ReportContent.from_json(version.content),
        study=study,
        patient=patient,
        instances=source_instances(session, report),
        algorithm=algorithm or algorithm_of(draft_run(session, report)),
        issued=version.created_at,
    )


def fhir_resources(
    session: Session,
    settings: Settings,
    version: ReportVersion,
    *,
    withdrawal: str | None = None,
) -> dict[str, Any]:
    """The R4B resources for a version, by type: DiagnosticReport, ImagingStudy, Provenance,
    Device (the AI author) and, once signed, Practitioner (the verifier). A ``withdrawal``
    (why) is the DiagnosticReport alone, status entered-in-error.

    The DiagnosticReport's id is the report's uid and stays across versions (each version
    updates it: preliminary, final, amended); the Provenance ``<uid>-v<n>`` names the AI device
    as author and, once signed, the radiologist as verifier.
    """
    ctx = version_context(session, version)
    series = {
        row.id: row
        for row in session.scalars(
            select(Series).where(Series.id.in_({i.series_pk for i in ctx.instances}))
        )
    }
    return build_fhir_resources(ctx, series, withdrawal=withdrawal)


def fhir_resources_for_page(
    session: Session,
    versions: Sequence[tuple[ReportVersion, str | None]],
    *,
    only: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`fhir_resources` for a page of versions (each with its withdrawal reason or
    ``None``), gathered in a fixed number of statements whatever the page holds: what a FHIR
    search serves; ``only``: that resource type alone (a search page needs one). A version
    whose resources cannot be built (a value FHIR cannot carry) is logged and given as an empty
    dict, so one odd record never fails the page."""
    if not versions:
        return []
    reports = _by_id(session, Report, {v.report_pk for v, _ in versions})
    studies = _by_id(session, Study, {r.study_pk for r in reports.values()})
    patients = _by_id(session, Patient, {s.patient_pk for s in studies.values()})
    study_versions = _by_id(session, StudyVersion, {r.study_version_pk for r in reports.values()})
    instances: dict[int, list[tuple[Instance, int]]] = {}
    if only in (None, "ImagingStudy"):  # the images: what an ImagingStudy lists
        for instance, study_pk, number in session.execute(
            select(Instance, StudyVersion.study_pk, StudyVersion.number)
            .join(StudyVersion, StudyVersion.id == Instance.version_pk)
            .where(StudyVersion.study_pk.in_(set(studies)))
            .order_by(Instance.id)
        ):
            instances.setdefault(study_pk, []).append((instance, number))
    series_pks = {i.series_pk for rows in instances.values() for i, _ in rows}
    series = _by_id(session, Series, series_pks) if series_pks else {}
    runs = {
        report_pk: run
        for report_pk, run in session.execute(
            select(ReportVersion.report_pk, DraftRun)
            .join(DraftRun, DraftRun.id == ReportVersion.draft_run_pk)
            .where(ReportVersion.report_pk.in_(set(reports)), ReportVersion.number == 1)
        )
    }
    built: list[dict[str, Any]] = []
    for version, withdrawal in versions:
        report = reports[version.report_pk]
        study = studies[report.study_pk]
        limit = study_versions[report.study_version_pk].number
        ctx = VersionContext(
            report=report,
            version=version,
            content=ReportContent.from_json(version.content),
            study=study,
            patient=patients[study.patient_pk],
            instances=[i for i, n in instances.get(study.id, []) if n <= limit],
            algorithm=algorithm_of(runs.get(report.id)),
            issued=version.created_at,
        )
        try:
            built.append(build_fhir_resources(ctx, series, withdrawal=withdrawal, only=only))
        except ValueError as error:  # pydantic's ValidationError is one
            log.error("report %s v%s: no FHIR resources: %s", report.uid, version.number, error)
            built.append({})
    return built


def _by_id(session: Session, table: Any, ids: set[int]) -> dict[int, Any]:
    return {row.id: row for row in session.scalars(select(table).where(table.id.in_(ids)))}


def build_fhir_resources(
    ctx: VersionContext,
    series: Mapping[int, Series],
    *,
    withdrawal: str | None = None,
    only: str | None = None,
) -> dict[str, Any]:
    """The R4B resources of a version from its gathered context (no database access);
    ``only``: that resource type alone, if the version has one (each is built only if asked)."""
    patient = PatientRef(
        id=ctx.patient.patient_id,
        system=f"urn:raddraft:issuer:{ctx.patient.issuer_of_patient_id}"
        if ctx.patient.issuer_of_patient_id
        else "urn:raddraft:patient-id",
        name=ctx.patient.patient_name or None,
    )
    version = ctx.version
    study_id = imaging_study_id(ctx.study)
    device_uid = device_uid_for(ctx.algorithm)
    device_id = resource_id_for(device_uid)
    signer = ctx.content.signer
    builders: dict[str, Callable[[], Any]] = {
        "DiagnosticReport": lambda: diagnostic_report(
            ctx.content,
            resource_id=ctx.report.uid,
            patient=patient,
            study_instance_uid=ctx.study.study_instance_uid,
            issued=ctx.issued,
            demo=ctx.algorithm.demo,
            imaging_study_id=study_id,
            accession=ctx.study.accession_number or None,
            sr_sop_instance_uid=version.sr_sop_instance_uid,
            withdrawal=withdrawal,
        ),
    }
    if withdrawal is None:
        builders["ImagingStudy"] = lambda: imaging_study(
            resource_id=study_id,
            study_instance_uid=ctx.study.study_instance_uid,
            patient=patient,
            images=[_image_ref(series[inst.series_pk], inst) for inst in ctx.instances],
            accession=ctx.study.accession_number or None,
            description=ctx.study.study_description or None,
        )
        builders["Provenance"] = lambda: provenance(
            resource_id=f"{ctx.report.uid}-v{version.number}",
            targets=[f"DiagnosticReport/{ctx.report.uid}"],
            recorded=ctx.issued,
            algorithm=ctx.algorithm,
            device_id=device_id,
            signer=signer,
        )
        builders["Device"] = lambda: device(
            ctx.algorithm, resource_id=device_id, device_uid=device_uid
        )
        if signer is not None:
            builders["Practitioner"] = lambda: practitioner(signer)
    return {kind: build() for kind, build in builders.items() if only in (None, kind)}


def _image_ref(series: Series, instance: Instance) -> ImageRef:
    def number(value: str) -> int | None:
        return decimal(value, max_digits=IS_DIGITS, signed=True)

    return ImageRef(
        series_uid=series.series_instance_uid,
        sop_instance_uid=instance.sop_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        modality=series.modality or "OT",
        series_number=number(series.series_number),
        instance_number=number(instance.instance_number),
        series_description=series.series_description or None,
    )


def imaging_study_id(study: Study) -> str:
    """A FHIR id for a study: its UID when that fits [A-Za-z0-9.-]{1,64} (a UID of digits and
    dots always does), else one derived from it (:func:`fhir_id_for`)."""
    return fhir_id_for(study.study_instance_uid)


def hl7_message(
    session: Session,
    settings: Settings,
    version: ReportVersion,
    control_id: str,
    *,
    withdrawal: str | None = None,
) -> str:
    """The ORU^R01 for a version: OBR-25 P (draft), F (signed), C (amended/corrected), X with
    OBX-11 W for a ``withdrawal``."""
    ctx = version_context(session, version)
    return oru_r01(
        ctx.content,
        patient_id=ctx.patient.patient_id,
        patient_name=ctx.patient.patient_name,
        accession=ctx.study.accession_number,
        study_uid=ctx.study.study_instance_uid,
        control_id=control_id,
        sending_app=settings.ae_title,
        sending_facility=settings.institution_name,
        receiving_app="RIS",
        receiving_facility=settings.institution_name,
        demo=ctx.algorithm.demo,
        patient_id_authority=ctx.patient.issuer_of_patient_id or None,
        timestamp=ctx.issued,
        withdrawal=withdrawal,
    )


# --------------------------------------------------------------------------------------------
# Outbound rows and jobs


#: The release-policy setting of each destination kind (README: "Release policy").
RELEASE_POLICY: dict[str, str] = {
    "dicom": "release_unsigned_pacs",
    "hl7": "release_unsigned_hl7",
    "fhir": "release_unsigned_fhir",
}


def release_state(
    settings: Settings,
    kind: str,
    *,
    send: bool,
    signed: bool,
    withdrawal: bool,
    study_signed: bool = False,
    identity_conflict: bool = False,
) -> tuple[SentState, str | None]:
    """Whether a version's objects for destination ``kind`` go now, and if not, why.

    A demo model's objects are held unless demo export is allowed; the RIS's and FHIR's are
    held while the study has an unresolved ``identity_conflict`` (signed ones too: released
    when an administrator resolves it); an unsigned draft's are held
    when that kind's release policy says ``hold``, and always for the RIS and FHIR when another
    report of the study is signed (``study_signed``: a later study version's draft must not
    follow the final the RIS shows for that accession). Signed versions and withdrawals always
    go (a withdrawal with nothing delivered before it is dropped at sending time instead).
    """
    if not send:
        return SentState.held, "demo model: RADDRAFT_ALLOW_DEMO_EXPORT is off"
    if withdrawal:
        return SentState.pending, None
    if identity_conflict and kind in ("hl7", "fhir"):
        # The RIS files results by patient: not under a name the study's own header denies.
        return SentState.held, IDENTITY_HOLD
    if signed:
        return SentState.pending, None
    if study_signed and kind in ("hl7", "fhir"):
        return SentState.held, "a signed report of this study was sent: no preliminary follows it"
    name = RELEASE_POLICY[kind]
    if getattr(settings, name) == "hold":
        return SentState.held, f"unsigned AI draft held until sign-off: RADDRAFT_{name.upper()}"
    return SentState.pending, None


#: Why a RIS message waits for an administrator (:func:`release_state`); the release after the
#: resolution looks for rows held with exactly this reason.
IDENTITY_HOLD = "patient identity conflict: held until an administrator resolves it"


@dataclass
class _Registrar:
    """Adds one version's sent-object rows and jobs, each in the state its policy gives."""

    session: Session
    settings: Settings
    version: ReportVersion
    report: Report
    send: bool
    signed: bool
    withdrawal: str | None
    study_signed: bool = False
    identity_conflict: bool = False
    made: list[jobs.Job] = field(default_factory=list)

    def state_for(self, group: str) -> tuple[SentState, str | None]:
        return release_state(
            self.settings,
            group,
            send=self.send,
            signed=self.signed,
            withdrawal=self.withdrawal is not None,
            study_signed=self.study_signed,
            identity_conflict=self.identity_conflict,
        )

    def add(self, kind: str, identifier: str, destination: str, path: str, group: str) -> None:
        state, why = self.state_for(group)
        self.session.add(
            SentObject(
                report_version_pk=self.version.id,
                kind=kind,
                identifier=identifier,
                destination=destination,
                path=path,
                state=state,
                last_error=why,
            )
        )

    def job(self, group: str, args: job_contract.JobArgs) -> None:
        if self.state_for(group)[0] == SentState.pending:
            self.made.append(
                job_contract.enqueue(self.session, args, priority=self.report.priority)
            )


def register_outbound(
    session: Session,
    settings: Settings,
    version: ReportVersion,
    built: BuiltDicom,
    *,
    algorithm: Algorithm,
    send: bool,
    withdrawal: str | None = None,
) -> list[jobs.Job]:
    """Record what goes where for ``version`` and enqueue one job per destination.

    Rows that may not leave now (:func:`release_state`: a demo model's draft, an unsigned draft
    under a ``hold`` policy) are written as ``held`` with the reason, and no job is made for
    them: the objects exist for viewing and provenance, but nothing leaves RadDraft. A
    ``withdrawal`` (why) registers the withdrawal messages of a rejected or superseded draft:
    ``built`` holds its IOCM rejection note, HL7 and FHIR say withdrawn.
    """
    report = session.get(Report, version.report_pk)
    assert report is not None
    out = _Registrar(
        session,
        settings,
        version,
        report,
        send=send,
        signed=ReportContent.from_json(version.content).status.is_signed,
        withdrawal=withdrawal,
        study_signed=_study_signed(session, report),
        identity_conflict=identity_unresolved(session, report.study_pk),
    )
    for target in destinations.export_targets(settings):
        destination = str(target)  # the serialised form the rows and the job keep
        for kind, uid, path in built.files:
            out.add(kind, uid, destination, path, "dicom")
        if built.files:
            out.job("dicom", job_contract.ExportDicom(version.id, destination))
    if settings.ris_mllp:
        _register_hl7(out)
    if settings.fhir_server_url:
        _register_fhir(out)
    session.flush()
    return out.made


def identity_unresolved(session: Session, study_pk: int) -> bool:
    """Whether the study has an identity conflict no administrator has resolved yet."""
    conflict = identity_conflict(session, study_pk)
    return conflict is not None and conflict.resolved_at is None


def _study_signed(session: Session, report: Report) -> bool:
    """Whether another report of the same study was signed (its final went out)."""
    other = session.scalar(
        select(Report.id)
        .where(
            Report.study_pk == report.study_pk,
            Report.id != report.id,
            Report.state.in_(list(SIGNED_STATES)),
        )
        .limit(1)
    )
    return other is not None


def _register_hl7(out: _Registrar) -> None:
    control_id = "RD" + uuid.uuid4().hex[:18].upper()
    message = hl7_message(
        out.session, out.settings, out.version, control_id, withdrawal=out.withdrawal
    )
    relative = f"hl7/{control_id}.hl7"
    _write_once(out.session, out.settings, relative, message.encode("utf-8"))
    out.add(SentKind.hl7, control_id, out.settings.ris_mllp, relative, "hl7")
    out.job("hl7", job_contract.SendHl7(out.version.id))


def _register_fhir(out: _Registrar) -> None:
    resources = fhir_resources(out.session, out.settings, out.version, withdrawal=out.withdrawal)
    for resource in resources.values():
        kind = resource.get_resource_type()
        relative = f"fhir/{out.report.uid}-v{out.version.number}-{kind}.json"
        body = json.dumps(json.loads(resource.model_dump_json()), indent=1)
        _write_once(out.session, out.settings, relative, body.encode("utf-8"))
        identifier = f"{kind}/{resource.id}"
        out.add(SentKind.fhir, identifier, out.settings.fhir_server_url, relative, "fhir")
    out.job("fhir", job_contract.PushFhir(out.version.id))

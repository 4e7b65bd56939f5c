"""Reading the archive: what the worker needs to draft a study version and find its priors.

The functions here are the archive's read side for the other folders. For the joins of the
worklist and the queue page, :mod:`dicom_listener` also exposes the archive's table classes
(``Patient``, ``Study``, ``StudyVersion``, ``Series``, ``Instance``, ``IngestEvent``); other
folders read them and never write them: only the listener's ingest and completion do.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_listener.eligibility import (
    ImageFacts,
    ImagePolicy,
    image_refusal,
    is_frontal,
    is_lateral,
)
from dicom_listener.tables import (
    Instance,
    Patient,
    Series,
    Study,
    StudyVersion,
    VersionState,
)
from raddraft.numbers import IS_DIGITS, decimal
from raddraft.settings import get_settings


@dataclass(frozen=True)
class ArchivedImage:
    """One archived instance, as the worker reads it (pixels not loaded)."""

    path: Path  # absolute
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    modality: str
    body_part_examined: str
    view_position: str  # (0018,5101), e.g. PA, AP, LL
    view_code: str  # View Code Sequence meaning, e.g. "postero-anterior"
    image_laterality: str
    rows: int | None
    columns: int | None
    photometric_interpretation: str
    transfer_syntax_uid: str
    instance_number: str
    version_number: int

    @property
    def frontal(self) -> bool:
        return is_frontal(self.view_position, self.view_code)

    @property
    def lateral(self) -> bool:
        return is_lateral(self.view_position, self.view_code)


@dataclass(frozen=True)
class StudyInfo:
    """A study version with its study and patient attributes."""

    study_version_pk: int
    version_number: int
    state: str
    completed_at: dt.datetime | None
    completion_reason: str | None
    eligible: bool | None
    ineligible_reason: str | None
    job_key: str | None
    study_pk: int
    study_instance_uid: str
    accession_number: str
    study_date: str  # YYYYMMDD as received
    study_time: str
    study_description: str
    referring_physician: str
    indication: str
    priority: int  # raddraft.jobs.Priority
    patient_pk: int
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    birth_date: str
    sex: str


def _info(version: StudyVersion, study: Study, patient: Patient) -> StudyInfo:
    return StudyInfo(
        study_version_pk=version.id,
        version_number=version.number,
        state=version.state,
        completed_at=version.completed_at,
        completion_reason=version.completion_reason,
        eligible=version.eligible,
        ineligible_reason=version.ineligible_reason,
        job_key=version.job_key,
        study_pk=study.id,
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_time=study.study_time,
        study_description=study.study_description,
        referring_physician=study.referring_physician,
        indication=study.indication,
        priority=study.priority,
        patient_pk=patient.id,
        patient_id=patient.patient_id,
        issuer_of_patient_id=patient.issuer_of_patient_id,
        patient_name=patient.patient_name,
        birth_date=patient.birth_date,
        sex=patient.sex,
    )


def study_for_version(session: Session, study_version_pk: int) -> StudyInfo:
    """The study version ``study_version_pk``; raises :class:`LookupError` if unknown."""
    row = session.execute(
        select(StudyVersion, Study, Patient)
        .join(Study, StudyVersion.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(StudyVersion.id == study_version_pk)
    ).first()
    if row is None:
        raise LookupError(f"no study version {study_version_pk}")
    return _info(*row)


def version_images(
    session: Session,
    study_version_pk: int,
    *,
    archive_dir: Path | None = None,
    policy: ImagePolicy | None = None,
) -> list[ArchivedImage]:
    """Every image of the study up to and including this version (a later version's draft
    reads the earlier images too) that the model may read, in series then instance number
    order. ``policy`` (default: the settings') leaves out DERIVED, FOR PROCESSING and neither
    frontal nor lateral images (:func:`dicom_listener.eligibility.image_refusal`)."""
    version = session.get(StudyVersion, study_version_pk)
    if version is None:
        raise LookupError(f"no study version {study_version_pk}")
    settings = get_settings()
    root = archive_dir or settings.archive_dir
    policy = policy or ImagePolicy.from_settings(settings)
    rows = session.execute(
        select(Instance, Series, StudyVersion.number)
        .join(Series, Instance.series_pk == Series.id)
        .join(StudyVersion, Instance.version_pk == StudyVersion.id)
        .where(StudyVersion.study_pk == version.study_pk, StudyVersion.number <= version.number)
    ).all()

    def order(row: tuple[Instance, Series, int]) -> tuple[str, int, str, str]:
        instance, series, _ = row
        number = instance.instance_number
        return (
            series.series_number.zfill(12),
            decimal(number, max_digits=IS_DIGITS, signed=True) or 0,
            number,
            instance.sop_instance_uid,
        )

    images = []
    for instance, series, number in sorted(rows, key=order):
        facts = ImageFacts(
            modality=series.modality,
            view_position=instance.view_position,
            view_code=instance.view_code,
            image_type=instance.image_type,
            presentation_intent=instance.presentation_intent,
            sop_class_uid=instance.sop_class_uid,
        )
        if image_refusal(facts, policy) is not None:
            continue
        images.append(
            ArchivedImage(
                path=(root / instance.path).resolve(),
                sop_instance_uid=instance.sop_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                series_instance_uid=series.series_instance_uid,
                modality=series.modality,
                body_part_examined=series.body_part_examined,
                view_position=instance.view_position,
                view_code=instance.view_code,
                image_laterality=instance.image_laterality,
                rows=instance.rows,
                columns=instance.columns,
                photometric_interpretation=instance.photometric_interpretation,
                transfer_syntax_uid=instance.transfer_syntax_uid,
                instance_number=instance.instance_number,
                version_number=number,
            )
        )
    return images


def prior_versions(
    session: Session,
    *,
    patient_id: str,
    issuer_of_patient_id: str = "",
    before_study_date: str | None = None,
    exclude_study_instance_uid: str | None = None,
) -> list[StudyInfo]:
    """Earlier chest radiographs of the patient: the latest complete, eligible version of each
    other study, most recent first (by StudyDate then StudyTime as received).

    ``before_study_date`` (YYYYMMDD) keeps studies dated strictly earlier; studies with no date
    are kept last. The worker picks the first.
    """
    rows = session.execute(
        select(StudyVersion, Study, Patient)
        .join(Study, StudyVersion.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(
            Patient.patient_id == patient_id,
            Patient.issuer_of_patient_id == issuer_of_patient_id,
            StudyVersion.state == VersionState.complete,
            StudyVersion.eligible.is_(True),
        )
    ).all()
    latest: dict[int, tuple[StudyVersion, Study, Patient]] = {}
    for version, study, patient in rows:
        if exclude_study_instance_uid and study.study_instance_uid == exclude_study_instance_uid:
            continue
        if before_study_date and study.study_date and study.study_date >= before_study_date:
            continue
        kept = latest.get(study.id)
        if kept is None or kept[0].number < version.number:
            latest[study.id] = (version, study, patient)
    infos = [_info(*row) for row in latest.values()]
    infos.sort(key=lambda i: (i.study_date != "", i.study_date, i.study_time), reverse=True)
    return infos


def latest_version_pk(session: Session, study_instance_uid: str) -> int | None:
    """The newest version of a study, complete or not (a prior still arriving by C-MOVE)."""
    return session.scalar(
        select(StudyVersion.id)
        .join(Study, Study.id == StudyVersion.study_pk)
        .where(Study.study_instance_uid == study_instance_uid)
        .order_by(StudyVersion.number.desc())
        .limit(1)
    )

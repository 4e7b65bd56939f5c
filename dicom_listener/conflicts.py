"""Duplicate SOP Instance UIDs with other content: found, recorded, read back.

A SOP Instance UID names one instance for good (PS3.5 9.1); a sender that stores the same UID
again usually resends the same instance (answered success, stored once), but a UID reused for
another patient's image (a modality's UID generator reset, a cloned VM, a hostile peer) must
neither replace the archived instance nor vanish in silence. :func:`differences` compares the
identifying attributes of the archived instance with the new one; a difference makes the
C-STORE a conflict: the new copy quarantined, one ``instance_conflicts`` row saying what
differed, the answer 0x0111 "duplicate SOP instance" (PS3.7 C.4.2).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_listener.header import InstanceHeader
from dicom_listener.tables import Instance, InstanceConflict, Patient, Series, Study

#: PS3.7 C.4.2 "Failure: Duplicate SOP Instance": not a resource problem, so not retried.
DUPLICATE_CONFLICT = 0x0111


@dataclass(frozen=True)
class ConflictInfo:
    """One recorded conflict, as administrators read it."""

    id: int
    at: dt.datetime
    sop_instance_uid: str
    calling_ae_title: str
    peer: str
    #: {attribute keyword: {"stored": value, "received": value}}
    differences: dict[str, dict[str, Any]]
    status: int
    quarantined: str


def differences(session: Session, header: InstanceHeader) -> dict[str, dict[str, Any]] | None:
    """What differs between the archived instance with ``header``'s SOP Instance UID and
    ``header``; None when no such instance is archived, ``{}`` when it is the same instance.

    Identity (patient, study, series, SOP class) and the image's own attributes must be equal;
    patient demographics and the accession number only when both sides have one, since a
    resend may fill in what the first copy left empty (the archive keeps the first).
    """
    row = session.execute(
        select(Instance, Series, Study, Patient)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(Instance.sop_instance_uid == header.sop_instance_uid)
    ).first()
    if row is None:
        return None
    instance, series, study, patient = row
    exact: list[tuple[str, Any, Any]] = [
        ("PatientID", patient.patient_id, header.patient_id),
        ("IssuerOfPatientID", patient.issuer_of_patient_id, header.issuer_of_patient_id),
        ("StudyInstanceUID", study.study_instance_uid, header.study_instance_uid),
        ("SeriesInstanceUID", series.series_instance_uid, header.series_instance_uid),
        ("SOPClassUID", instance.sop_class_uid, header.sop_class_uid),
        ("Rows", instance.rows, header.rows),
        ("Columns", instance.columns, header.columns),
        ("ViewPosition", instance.view_position, header.view_position),
        ("ImageLaterality", instance.image_laterality, header.image_laterality),
    ]
    when_both: list[tuple[str, Any, Any]] = [
        ("PatientName", patient.patient_name, header.patient_name),
        ("PatientBirthDate", patient.birth_date, header.birth_date),
        ("PatientSex", patient.sex, header.sex),
        ("AccessionNumber", study.accession_number, header.accession_number),
    ]
    found = {
        name: {"stored": stored, "received": received}
        for name, stored, received in exact
        if stored != received
    }
    found.update(
        {
            name: {"stored": stored, "received": received}
            for name, stored, received in when_both
            if stored and received and stored != received
        }
    )
    return found


def record(
    session: Session,
    header: InstanceHeader,
    found: dict[str, dict[str, Any]],
    *,
    calling_ae_title: str,
    peer: str,
    quarantined: str,
) -> None:
    """Add the conflict's row to ``session`` (the caller commits)."""
    session.add(
        InstanceConflict(
            sop_instance_uid=header.sop_instance_uid[:64],
            calling_ae_title=calling_ae_title[:16],
            peer=peer[:64],
            differences=found,
            status=DUPLICATE_CONFLICT,
            quarantined=quarantined[:512],
        )
    )


def instance_conflicts(
    session: Session, *, limit: int = 100, since: dt.datetime | None = None
) -> list[ConflictInfo]:
    """The recorded conflicts, newest first (at most ``limit``, only after ``since``)."""
    query = select(InstanceConflict).order_by(InstanceConflict.id.desc()).limit(limit)
    if since is not None:
        query = query.where(InstanceConflict.at > since)
    return [
        ConflictInfo(
            id=c.id,
            at=c.at,
            sop_instance_uid=c.sop_instance_uid,
            calling_ae_title=c.calling_ae_title,
            peer=c.peer,
            differences=dict(c.differences),
            status=c.status,
            quarantined=c.quarantined,
        )
        for c in session.scalars(query)
    ]

"""The archive's tables: patients, studies, series, instances, study versions, ingest events.

Names follow the DICOM information model (PS3.3 A.1.2: Patient, Study, Series, Instance). A
*study version* groups the instances that arrived before one completion of the study; instances
arriving after completion open the next version, whose draft supersedes the earlier one's.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from raddraft.db import Base, utcnow


class VersionState(enum.StrEnum):
    open = "open"  # receiving instances
    complete = "complete"  # closed; drafted when eligible


class CompletionReason(enum.StrEnum):
    quiet = "quiet"  # no instance for the quiet period
    cxr_rule = "cxr_rule"  # frontal + lateral present, or frontal and the shorter wait
    forced = "forced"  # an administrator said so


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))  # (0010,0020)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")  # (0010,0021)
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")

    studies: Mapped[list[Study]] = relationship(back_populates="patient")

    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)  # date ranges
    study_time: Mapped[str] = mapped_column(String(32), default="")
    study_description: Mapped[str] = mapped_column(String(256), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    priority: Mapped[int] = mapped_column(default=2)  # raddraft.jobs.Priority
    indication: Mapped[str] = mapped_column(Text, default="")  # reason for the requested procedure
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")
    versions: Mapped[list[StudyVersion]] = relationship(
        back_populates="study", order_by="StudyVersion.number"
    )


class StudyVersion(Base):
    __tablename__ = "study_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    number: Mapped[int] = mapped_column(default=1)
    state: Mapped[str] = mapped_column(String(16), default=VersionState.open)
    opened_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_instance_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    completion_reason: Mapped[str | None] = mapped_column(String(16), default=None)
    eligible: Mapped[bool | None] = mapped_column(default=None)
    ineligible_reason: Mapped[str | None] = mapped_column(Text, default=None)
    job_key: Mapped[str | None] = mapped_column(String(200), default=None)

    study: Mapped[Study] = relationship(back_populates="versions")
    instances: Mapped[list[Instance]] = relationship(back_populates="version")

    __table_args__ = (
        UniqueConstraint("study_pk", "number"),
        Index("ix_study_versions_state", "state"),
        # The queue page's refused studies, newest first (most versions are eligible).
        Index("ix_study_versions_eligible_completed", "eligible", "completed_at", "id"),
    )


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[str] = mapped_column(String(12), default="")
    series_description: Mapped[str] = mapped_column(String(256), default="")
    body_part_examined: Mapped[str] = mapped_column(String(64), default="")

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    version_pk: Mapped[int] = mapped_column(ForeignKey("study_versions.id"), index=True)
    instance_number: Mapped[str] = mapped_column(String(12), default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512))  # relative to the archive directory
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    view_position: Mapped[str] = mapped_column(String(16), default="")  # (0018,5101)
    view_code: Mapped[str] = mapped_column(String(64), default="")  # ViewCodeSequence meaning
    image_type: Mapped[str] = mapped_column(String(64), default="")  # (0008,0008), backslashed
    presentation_intent: Mapped[str] = mapped_column(String(16), default="")  # (0008,0068)
    image_laterality: Mapped[str] = mapped_column(String(4), default="")
    rows: Mapped[int | None] = mapped_column(default=None)
    columns: Mapped[int | None] = mapped_column(default=None)
    photometric_interpretation: Mapped[str] = mapped_column(String(16), default="")
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")
    version: Mapped[StudyVersion] = relationship(back_populates="instances")


class IdentityConflict(Base):
    """A study whose header names its patient differently from what RadDraft holds under the
    same Patient ID and Issuer of Patient ID (PS3.3 C.7.1.1: name, birth date, sex).

    The study keeps the patient row of its identifier, but shows its own header's demographics
    (``received_*``) beside the held ones until an administrator resolves the conflict; nothing
    of its report reaches the RIS before that. One row per study.
    """

    __tablename__ = "identity_conflicts"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    received_name: Mapped[str] = mapped_column(String(324), default="")
    received_birth_date: Mapped[str] = mapped_column(String(8), default="")
    received_sex: Mapped[str] = mapped_column(String(16), default="")
    held_name: Mapped[str] = mapped_column(String(324), default="")
    held_birth_date: Mapped[str] = mapped_column(String(8), default="")
    held_sex: Mapped[str] = mapped_column(String(16), default="")
    detected_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    resolved_by: Mapped[str | None] = mapped_column(String(64), default=None)
    resolution: Mapped[str | None] = mapped_column(Text, default=None)


class IngestEventKind(enum.StrEnum):
    echo = "echo"
    association_accepted = "association_accepted"
    association_rejected = "association_rejected"
    stored = "stored"
    duplicate = "duplicate"
    refused = "refused"  # out of resources: disk watermark, database down
    quarantined = "quarantined"  # unreadable or incomplete dataset
    completed = "completed"
    purged = "purged"  # the retention policy took the study's instances out of the archive
    conflict = "conflict"  # a SOP Instance UID already stored, sent again with other content


class IngestEvent(Base):
    """What happened at the door, one row per event, for the admin page and the audit."""

    __tablename__ = "ingest_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    peer: Mapped[str] = mapped_column(String(64), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[int | None] = mapped_column(default=None)  # DIMSE status answered
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class InstanceConflict(Base):
    """A SOP Instance UID received again with other identifying content than the archived one
    (another patient, study, series, SOP class, ...): the archived instance stays, the new copy
    is quarantined and answered 0x0111 "duplicate SOP instance" (PS3.7 C.4.2). One row per
    such arrival, for administrators (``raddraft studies conflicts``); UIDs are meant to be
    unique (PS3.5 9.1), so each row is a sender's error or a collision to resolve by hand.
    """

    __tablename__ = "instance_conflicts"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    peer: Mapped[str] = mapped_column(String(64), default="")
    #: {attribute keyword: {"stored": value, "received": value}} for each attribute that differs
    differences: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[int] = mapped_column(default=0x0111)  # the C-STORE status answered
    quarantined: Mapped[str] = mapped_column(String(512), default="")  # the new copy's file

"""Fixtures for the lifecycle tests: an archived chest study, users with tokens, the app."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from sqlalchemy.engine import Engine

from dicom_listener.tables import Instance, Patient, Series, Study, StudyVersion
from raddraft.db import session_scope, utcnow
from raddraft.settings import Settings
from report_drafts.content import Algorithm, Box, Finding, ReportContent
from report_drafts.tables import Role
from report_drafts.users import add_user
from web.api import create_app

DX = "1.2.840.10008.5.1.4.1.1.1.1"
ROOT = "1.2.826.0.1.3680043.10.1077."


def write_dx(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    photometric: str = "MONOCHROME2",
    rows: int = 64,
    columns: int = 48,
) -> Dataset:
    """A small DX For Presentation image with the attributes a modality sends."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(DX)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "DX"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P0001"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.StudyDate = "20261120"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Test"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["P", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.5, 0.5]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    pixels = np.tile(np.linspace(0, 4095, columns, dtype=np.uint16), (rows, 1))
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


@dataclass
class ArchivedStudy:
    study_version_pk: int
    study_instance_uid: str
    sop_instance_uids: list[str]


def archive_study(
    engine: Engine,
    settings: Settings,
    *,
    study_uid: str | None = None,
    version_number: int = 1,
    images: int = 1,
    photometric: str = "MONOCHROME2",
    priority: int = 2,
    accession: str = "ACC0001",
    patient_id: str = "P0001",
) -> ArchivedStudy:
    """Write images into the archive and the listener's tables, as a completed study version."""
    study_uid = study_uid or generate_uid(prefix=ROOT)
    with session_scope(engine) as session:
        study = session.query(Study).filter_by(study_instance_uid=study_uid).one_or_none()
        if study is None:
            patient = session.query(Patient).filter_by(patient_id=patient_id).one_or_none()
            if patient is None:
                patient = Patient(
                    patient_id=patient_id,
                    patient_name="Doe^Jane",
                    birth_date="19600101",
                    sex="F",
                )
                session.add(patient)
                session.flush()
            study = Study(
                study_instance_uid=study_uid,
                patient_pk=patient.id,
                accession_number=accession,
                study_date="20261120",
                study_time="101500",
                study_id="1",
                priority=priority,
                indication="cough",
            )
            session.add(study)
            session.flush()
        sv = StudyVersion(
            study_pk=study.id,
            number=version_number,
            state="complete",
            completed_at=utcnow() - dt.timedelta(minutes=10 - version_number),
            completion_reason="quiet",
            eligible=True,
            job_key=None,
        )
        session.add(sv)
        session.flush()
        series_uid = generate_uid(prefix=ROOT)
        series = Series(
            series_instance_uid=series_uid,
            study_pk=study.id,
            modality="DX",
            body_part_examined="CHEST",
        )
        session.add(series)
        session.flush()
        uids = []
        for _ in range(images):
            sop_uid = str(generate_uid(prefix=ROOT))
            relative = f"{study_uid}/{series_uid}/{sop_uid}.dcm"
            write_dx(
                settings.archive_dir / relative,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=sop_uid,
                photometric=photometric,
            )
            session.add(
                Instance(
                    sop_instance_uid=sop_uid,
                    sop_class_uid=DX,
                    series_pk=series.id,
                    version_pk=sv.id,
                    transfer_syntax_uid=ExplicitVRLittleEndian,
                    path=relative,
                    size_bytes=(settings.archive_dir / relative).stat().st_size,
                    view_position="PA",
                    rows=64,
                    columns=48,
                    photometric_interpretation=photometric,
                )
            )
            uids.append(sop_uid)
        session.flush()
        return ArchivedStudy(sv.id, study_uid, uids)


ALGORITHM = Algorithm(name="StanfordAIMI/CheXOne", version="rev-abc123", program_version="0.1.0")

FINDINGS_TEXT = "Small left pleural effusion. Heart size is normal."
IMPRESSION = "Small left pleural effusion."


def draft_content(sop_uid: str) -> ReportContent:
    """An AI draft with two grounded findings on ``sop_uid`` and one without a box."""
    return ReportContent(
        findings_text=FINDINGS_TEXT,
        impression=IMPRESSION,
        progression="No prior study.",
        findings=(
            Finding(
                tracking_uid=generate_uid(prefix=ROOT),
                label="pleural effusion",
                sop_instance_uid=sop_uid,
                box=Box(4, 30, 20, 60),
                laterality="left",
                certainty=0.8,
            ),
            Finding(
                tracking_uid=generate_uid(prefix=ROOT),
                label="cardiomegaly",
                sop_instance_uid=sop_uid,
                box=Box(10, 10, 40, 40),
            ),
            Finding(tracking_uid=generate_uid(prefix=ROOT), label="atelectasis"),
        ),
    )


RUN = {
    "stages": [
        {
            "stage": i,
            "question": f"question {i}",
            "answer": f"answer {i}",
            "reasoning": f"because {i}",
            "seconds": 0.1 * i,
        }
        for i in range(1, 9)
    ],
    "settings": {"max_new_tokens": 512},
    "prior": {"none": "no prior study in PACS"},
    "timings": {"total": 3.2},
}


@pytest.fixture
def tokens(engine: Engine) -> dict[str, str]:
    """One user per role (plus a second radiologist), by name -> token."""
    made = {}
    with session_scope(engine) as session:
        for name, role, display in (
            ("reader", Role.reader, "Reader^Rita"),
            ("rad", Role.radiologist, "House^Gregory"),
            ("rad2", Role.radiologist, "Grey^Meredith"),
            ("admin", Role.admin, "Admin^Ann"),
        ):
            _user, token = add_user(session, name, role, display_name=display)
            made[name] = token
    return made


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    # The API alone: the pages (issue 6) test themselves with their cookie sessions.
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

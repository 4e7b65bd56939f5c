"""The IHE IOCM rejection note (Key Object Selection, PS3.3 A.35.4) withdrawing an SR and a
GSPS: dciodvfy-clean, the right title, every withdrawn object in the evidence, and Orthanc
stores it."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from report_drafts.builders import build_gsps, build_rejection_note, build_sr, device_uid_for
from report_drafts.builders.kos_rejection_note import KOS_SOP_CLASS_UID
from tests.builders.helpers import ALGORITHM, dciodvfy_ok, draft_content, make_study, save
from tests.dicom_factory import new_uid
from tests.orthanc import OrthancServer, orthanc, orthanc_factory  # noqa: F401

REASON = "AI draft rejected by radiologist House^Gregory: effusion is on the right"


def _withdrawn() -> list[Dataset]:
    study = make_study()
    content = draft_content(study)
    sr = build_sr(
        study.sources,
        content,
        ALGORITHM,
        device_uid=device_uid_for(ALGORITHM),
        series_instance_uid=str(new_uid()),
        series_number=9901,
        instance_number=1,
        institution="General Hospital",
        previous=None,
    )
    gsps = build_gsps(
        study.pa,
        content.findings,
        ALGORITHM,
        series_instance_uid=str(new_uid()),
        series_number=9902,
        instance_number=1,
        institution="General Hospital",
        signed=False,
    )
    return [sr, gsps]


def _note(withdrawn: list[Dataset]) -> Dataset:
    return build_rejection_note(
        withdrawn,
        series_instance_uid=str(new_uid()),
        series_number=9903,
        instance_number=2,
        institution="General Hospital",
        reason=REASON,
    )


def test_rejection_note_references_every_withdrawn_object(tmp_path: Path) -> None:
    withdrawn = _withdrawn()
    note = _note(withdrawn)
    path = save(note, tmp_path / "kos.dcm")
    dciodvfy_ok(path)
    again = pydicom.dcmread(path)
    assert again.SOPClassUID == KOS_SOP_CLASS_UID and again.Modality == "KO"
    title = again.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113001",
        "DCM",
        "Rejected for Quality Reasons",
    )
    assert again.StudyInstanceUID == withdrawn[0].StudyInstanceUID
    assert again.PatientID == withdrawn[0].PatientID
    evidence = {
        (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
        for study in again.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {(ds.SOPClassUID, ds.SOPInstanceUID) for ds in withdrawn}
    referenced = {
        ref.ReferencedSOPInstanceUID
        for item in again.ContentSequence
        for ref in item.get("ReferencedSOPSequence", [])
    }
    assert referenced == {ds.SOPInstanceUID for ds in withdrawn}
    texts = [item.TextValue for item in again.ContentSequence if item.ValueType == "TEXT"]
    assert texts == [REASON]


def test_rejection_note_needs_objects_of_one_study() -> None:
    with pytest.raises(ValueError, match="at least one"):
        _note([])
    first, second = _withdrawn()[0], _withdrawn()[0]
    with pytest.raises(ValueError, match="studies"):
        _note([first, second])


def test_orthanc_stores_the_note(orthanc: OrthancServer, tmp_path: Path) -> None:  # noqa: F811
    withdrawn = _withdrawn()
    for ds in withdrawn:
        orthanc.upload(ds)
    note = _note(withdrawn)
    orthanc.upload(save(note, tmp_path / "kos.dcm"))
    uid = str(note.SOPInstanceUID)
    tags = orthanc.instance_tags(uid)
    assert tags["SOPClassUID"] == KOS_SOP_CLASS_UID
    assert orthanc.study_instance_uids(str(note.StudyInstanceUID)) == {
        uid,
        *(str(ds.SOPInstanceUID) for ds in withdrawn),
    }

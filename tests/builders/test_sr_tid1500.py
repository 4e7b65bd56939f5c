"""TID 1500 SR: dciodvfy clean, and the template content checked after re-reading with srread
(dciodvfy checks modules and content items, not templates)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from highdicom.sr import Comprehensive3DSR, srread
from pydicom import Dataset
from pydicom.sr.codedict import codes

from report_drafts.builders._dicom import PRIVATE_SCHEME, device_uid_for
from report_drafts.builders.sr_tid1500 import PROGRESSION_PREFIX, build_sr
from report_drafts.content import DEMO_WARNING, DRAFT_WARNING, ReportContent, ReportStatus
from tests.builders.helpers import (
    ALGORITHM,
    DEMO_ALGORITHM,
    SIGNER,
    Study,
    dciodvfy_ok,
    draft_content,
    make_study,
    save,
)
from tests.dicom_factory import new_uid

SR_SERIES = str(new_uid())


def _build(
    study: Study,
    content: ReportContent,
    *,
    algorithm=ALGORITHM,  # type: ignore[no-untyped-def]
    previous: Dataset | None = None,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
) -> Comprehensive3DSR:
    return build_sr(
        study.sources,
        content,
        algorithm,
        device_uid=device_uid_for(algorithm),
        series_instance_uid=SR_SERIES,
        series_number=900,
        instance_number=instance_number,
        institution="General Hospital",
        previous=previous,
        sop_instance_uid=sop_instance_uid,
    )


def _reread(sr: Dataset, tmp_path: Path, name: str) -> Comprehensive3DSR:
    path = save(sr, tmp_path / f"{name}.dcm")
    dciodvfy_ok(path)
    return srread(path)


def _qualitative_texts(sr: Comprehensive3DSR) -> list[tuple[str, str]]:
    root = sr.content[0]
    containers = [
        item for item in root.ContentSequence
        if item.ValueType == "CONTAINER" and item.name.value == "C0034375"
    ]
    assert len(containers) == 1, "one Qualitative Evaluations container (TID 1500 row 12)"
    assert containers[0].name.scheme_designator == "UMLS"
    return [(item.name.value, item.value) for item in containers[0].ContentSequence]


def _signed(content: ReportContent, status: ReportStatus = ReportStatus.final) -> ReportContent:
    return dataclasses.replace(content, status=status, signer=SIGNER)


@pytest.fixture
def study() -> Study:
    return make_study()


def test_draft_sr_template_content(study: Study, tmp_path: Path) -> None:
    content = draft_content(study)
    pa_before = study.pa.copy()
    sr = _reread(_build(study, content), tmp_path, "draft")

    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "PARTIAL", "UNVERIFIED", "PRELIMINARY"
    )
    assert "VerifyingObserverSequence" not in sr
    assert "PredecessorDocumentsSequence" not in sr
    assert sr.StudyInstanceUID == study.pa.StudyInstanceUID
    assert sr.Manufacturer == "RadDraft"

    report = sr.content
    groups = report.get_planar_roi_measurement_groups()
    grounded = content.grounded_findings
    assert len(groups) == len(grounded) == 2
    by_uid = {str(g.tracking_uid): g for g in groups}
    assert set(by_uid) == {f.tracking_uid for f in grounded}
    rejected = [f for f in content.findings if not f.accepted]
    assert rejected and rejected[0].tracking_uid not in by_uid

    images = {str(ds.SOPInstanceUID): ds for ds in study.sources}
    for finding in grounded:
        group = by_uid[finding.tracking_uid]
        assert group.tracking_identifier == finding.tracking_uid
        roi = group.roi
        assert roi is not None and roi.graphic_type.value == "POLYLINE"
        points = roi.value
        assert points.shape == (5, 2)
        assert np.array_equal(points[0], points[-1]), "closed polyline"
        source = images[finding.sop_instance_uid]  # type: ignore[index]
        assert points[:, 0].min() >= 0 and points[:, 0].max() <= source.Columns
        assert points[:, 1].min() >= 0 and points[:, 1].max() <= source.Rows
        selected = roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert selected.ReferencedSOPInstanceUID == finding.sop_instance_uid
        purpose = [
            item for item in group[0].ContentSequence
            if item.name == codes.DCM.GeometricPurposeOfRegion
        ]
        assert purpose[0].value == codes.SCT.BoundedBy
        algorithm = [item.value for item in group[0].ContentSequence
                     if item.name in (codes.DCM.AlgorithmName, codes.DCM.AlgorithmVersion)]
        assert algorithm == [ALGORITHM.name, ALGORITHM.version]

    effusion = by_uid[grounded[0].tracking_uid]
    assert effusion.finding_type.value == "60046008"
    site = effusion.finding_sites[0]
    assert site.value.value == "90572001"
    assert site.laterality.value == "7771000"
    # clipped to [0, Columns] x [0, Rows]: the box ran past the right and bottom edges
    assert effusion.roi.value[:, 0].max() == study.pa.Columns
    assert effusion.roi.value[:, 1].max() == study.pa.Rows
    certainty = effusion.get_measurements(name=codes.DCM.CertaintyOfFinding)
    assert certainty and certainty[0].value == pytest.approx(82.0)

    opacity = by_uid[grounded[1].tracking_uid]
    assert opacity.finding_type.scheme_designator == PRIVATE_SCHEME
    assert opacity.finding_type.value == "lung opacity"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME

    # the accepted finding without a box is kept, coded, in a TID 1501 group
    plain = report.get_image_measurement_groups()
    assert [str(g.tracking_uid) for g in plain] == [content.findings[2].tracking_uid]

    texts = _qualitative_texts(sr)
    findings_items = [value for code, value in texts if code == "121071"]
    impressions = [value for code, value in texts if code == "121073"]
    assert findings_items[0].startswith(content.findings_text)
    assert impressions[0].startswith(content.impression)
    assert findings_items[1].startswith(PROGRESSION_PREFIX + content.progression)
    assert all(DRAFT_WARNING in value for value in findings_items + impressions)
    assert ("121106", DRAFT_WARNING) in texts
    assert not any(DEMO_WARNING in value for _, value in texts)

    device = report.get_observer_contexts(observer_type=codes.DCM.Device)
    assert len(device) == 1
    attributes = device[0].observer_identifying_attributes
    assert attributes.uid == device_uid_for(ALGORITHM)
    assert attributes.manufacturer_name == "RadDraft"
    assert ALGORITHM.name in attributes.model_name
    assert not report.get_observer_contexts(observer_type=codes.DCM.Person)

    assert study.pa == pa_before, "the caller's source dataset was modified"
    assert "PatientBirthDate" not in study.pa


def test_signed_and_amended_chain(study: Study, tmp_path: Path) -> None:
    content = draft_content(study)
    draft = _reread(_build(study, content), tmp_path, "draft")

    signed_content = _signed(content)
    signed = _reread(_build(study, signed_content, previous=draft, instance_number=2),
                     tmp_path, "signed")
    assert signed.SOPInstanceUID != draft.SOPInstanceUID
    assert (signed.CompletionFlag, signed.VerificationFlag, signed.PreliminaryFlag) == (
        "COMPLETE", "VERIFIED", "FINAL"
    )
    observer = signed.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == SIGNER.name
    assert observer.VerifyingOrganization == SIGNER.organization
    predecessor = signed.PredecessorDocumentsSequence[0]
    assert predecessor.StudyInstanceUID == draft.StudyInstanceUID
    ref = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == draft.SOPInstanceUID
    person = signed.content.get_observer_contexts(observer_type=codes.DCM.Person)
    assert len(person) == 1
    assert person[0].observer_identifying_attributes.name == SIGNER.name
    assert person[0].observer_identifying_attributes.organization_name == SIGNER.organization
    assert signed.content.get_observer_contexts(observer_type=codes.DCM.Device)
    texts = _qualitative_texts(signed)
    assert not any(DRAFT_WARNING in value for _, value in texts)
    assert len(signed.content.get_planar_roi_measurement_groups()) == 2

    # the radiologist rejects the opacity when amending: only accepted findings remain
    findings = list(content.findings)
    findings[1] = dataclasses.replace(findings[1], accepted=False)
    amended_content = dataclasses.replace(
        _signed(content, ReportStatus.amended), findings=tuple(findings),
        impression="Small left pleural effusion. No consolidation.",
    )
    amended = _reread(_build(study, amended_content, previous=signed, instance_number=3),
                      tmp_path, "amended")
    assert amended.SOPInstanceUID not in (draft.SOPInstanceUID, signed.SOPInstanceUID)
    assert amended.VerificationFlag == "VERIFIED" and amended.CompletionFlag == "COMPLETE"
    ref = amended.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == signed.SOPInstanceUID
    groups = amended.content.get_planar_roi_measurement_groups()
    assert [str(g.tracking_uid) for g in groups] == [content.findings[0].tracking_uid]
    assert ("121073", amended_content.impression) in _qualitative_texts(amended)


def test_version_rules_are_enforced(study: Study) -> None:
    content = draft_content(study)
    draft = _build(study, content)
    with pytest.raises(ValueError, match="signer"):
        _build(study, dataclasses.replace(content, status=ReportStatus.final), previous=draft)
    with pytest.raises(ValueError, match="predecessor"):
        _build(study, _signed(content))
    with pytest.raises(ValueError, match="new SOP Instance UID"):
        _build(study, _signed(content), previous=draft, sop_instance_uid=draft.SOPInstanceUID)
    with pytest.raises(ValueError, match="VERIFIED"):
        _build(study, _signed(content, ReportStatus.amended), previous=draft)
    other = make_study()
    with pytest.raises(ValueError, match="another study"):
        _build(other, _signed(draft_content(other)), previous=draft)


def test_demo_warning_in_text_and_content_item(study: Study, tmp_path: Path) -> None:
    content = draft_content(study)
    sr = _reread(_build(study, content, algorithm=DEMO_ALGORITHM), tmp_path, "demo")
    texts = _qualitative_texts(sr)
    assert ("121106", DEMO_WARNING) in texts
    assert all(DEMO_WARNING in value for code, value in texts if code in ("121071", "121073"))
    assert sr.SeriesDescription.startswith("DEMO")
    # a signed demo report still says demo, but no longer draft
    signed = _reread(_build(study, _signed(content), algorithm=DEMO_ALGORITHM, previous=sr),
                     tmp_path, "demo-signed")
    texts = _qualitative_texts(signed)
    assert ("121106", DEMO_WARNING) in texts
    assert ("121106", DRAFT_WARNING) not in texts


def test_report_without_findings(study: Study, tmp_path: Path) -> None:
    content = ReportContent(findings_text="Lungs are clear.", impression="No acute disease.")
    sr = _reread(_build(study, content), tmp_path, "normal")
    assert sr.content.get_planar_roi_measurement_groups() == []
    texts = _qualitative_texts(sr)
    assert ("121073", f"No acute disease.\n\n{DRAFT_WARNING}") in texts
    # both views are still recorded as evidence
    evidence = {uid[2] for uid in sr.get_evidence()}
    assert evidence == {str(ds.SOPInstanceUID) for ds in study.sources}


def test_bad_findings_are_refused(study: Study) -> None:
    content = draft_content(study)
    stray = dataclasses.replace(content.findings[0], sop_instance_uid=str(new_uid()))
    with pytest.raises(ValueError, match="not among the sources"):
        _build(study, dataclasses.replace(content, findings=(stray,)))
    outside = dataclasses.replace(
        content.findings[0], box=dataclasses.replace(content.findings[0].box, x0=500, x1=600)
    )
    with pytest.raises(ValueError, match="no area"):
        _build(study, dataclasses.replace(content, findings=(outside,)))
    bad_uid = dataclasses.replace(content.findings[0], tracking_uid="not-a-uid")
    with pytest.raises(ValueError, match="tracking_uid"):
        _build(study, dataclasses.replace(content, findings=(bad_uid,)))

"""GSPS per source image: dciodvfy and dcmpschk clean, polarity, windowing, groups and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread

from report_drafts.builders.gsps import GRAPHIC_LAYER, build_gsps
from report_drafts.content import DRAFT_WARNING, Finding
from tests.builders.helpers import (
    ALGORITHM,
    DEMO_ALGORITHM,
    dciodvfy_ok,
    dcmpschk_ok,
    findings_for,
    make_study,
    save,
)
from tests.dicom_factory import new_uid

GSPS_SERIES = str(new_uid())


def _build(source: Dataset, findings: tuple[Finding, ...], **kwargs: object) -> Dataset:
    options: dict[str, object] = {
        "series_instance_uid": GSPS_SERIES,
        "series_number": 901,
        "instance_number": 1,
        "institution": "General Hospital",
    }
    options.update(kwargs)
    algorithm = options.pop("algorithm", ALGORITHM)
    return build_gsps(source, findings, algorithm, **options)  # type: ignore[arg-type]


def _validated(ds: Dataset, path: Path) -> Dataset:
    save(ds, path)
    dciodvfy_ok(path)
    dcmpschk_ok(path)
    return dcmread(path)


@pytest.mark.parametrize("view", ["pa", "lateral"])
def test_gsps_per_image(view: str, tmp_path: Path) -> None:
    study = make_study()
    source: Dataset = getattr(study, view)
    before = source.copy()
    findings = findings_for(study)
    gsps = _validated(_build(source, findings), tmp_path / f"{view}.dcm")

    expected_shape = "INVERSE" if source.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
    assert source.PhotometricInterpretation == (
        "MONOCHROME2" if view == "pa" else "MONOCHROME1"
    )
    assert gsps.PresentationLUTShape == expected_shape
    assert gsps.BodyPartExamined == source.BodyPartExamined
    voi = gsps.SoftcopyVOILUTSequence[0]
    assert float(voi.WindowCenter) == float(source.WindowCenter)
    assert float(voi.WindowWidth) == float(source.WindowWidth)

    assert gsps.ContentLabel == "AI_DRAFT"
    assert "unverified" in gsps.ContentDescription.lower()
    assert gsps.StudyInstanceUID == source.StudyInstanceUID
    referenced = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID

    layers = [item.GraphicLayer for item in gsps.GraphicLayerSequence]
    assert layers == [GRAPHIC_LAYER]
    assert len(GRAPHIC_LAYER) <= 16

    mine = [
        f for f in findings
        if f.accepted and f.box is not None and f.sop_instance_uid == source.SOPInstanceUID
    ]
    assert len(mine) == 1, "the fixture puts one accepted grounded finding on each view"
    groups = gsps.GraphicGroupSequence
    assert [g.GraphicGroupLabel for g in groups] == [f.label for f in mine]

    annotation = gsps.GraphicAnnotationSequence[0]
    graphics = annotation.GraphicObjectSequence
    assert len(graphics) == len(mine)
    for graphic, finding in zip(graphics, mine, strict=True):
        assert graphic.GraphicType == "POLYLINE"
        assert graphic.GraphicAnnotationUnits == "PIXEL"
        assert graphic.TrackingUID == finding.tracking_uid
        assert graphic.GraphicGroupID == groups[0].GraphicGroupID
        points = np.array(graphic.GraphicData, dtype=float).reshape(-1, 2)
        assert points.shape == (5, 2) and np.array_equal(points[0], points[-1])
        assert points[:, 0].min() >= 0 and points[:, 0].max() <= source.Columns
        assert points[:, 1].min() >= 0 and points[:, 1].max() <= source.Rows
    texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    assert any(DRAFT_WARNING.upper() in t for t in texts), texts
    assert any(mine[0].label in t for t in texts), texts

    assert source == before, "the caller's source dataset was modified"


def test_signed_demo_and_empty(tmp_path: Path) -> None:
    study = make_study()
    gsps = _validated(
        _build(study.pa, (), algorithm=DEMO_ALGORITHM, signed=True, instance_number=2),
        tmp_path / "signed.dcm",
    )
    assert gsps.ContentLabel == "AI_SIGNED"
    assert "DEMO" in gsps.ContentDescription and "signed" in gsps.ContentDescription
    assert "GraphicGroupSequence" not in gsps
    texts = [t.UnformattedTextValue for t in gsps.GraphicAnnotationSequence[0].TextObjectSequence]
    assert len(texts) == 1 and "DEMO" in texts[0] and "UNVERIFIED" not in texts[0]


@pytest.mark.parametrize("label", ["ai-draft", "THIS LABEL IS TOO LONG", "draft"])
def test_content_label_must_be_code_string(label: str) -> None:
    study = make_study()
    with pytest.raises(ValueError, match="content_label"):
        _build(study.pa, (), content_label=label)

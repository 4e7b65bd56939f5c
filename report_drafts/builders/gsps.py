"""The Grayscale Softcopy Presentation State that draws a report version's boxes on one image.

PS3.3 A.33.1 (GSPS IOD): Presentation State Identification (C.11.10) whose content label and
description say what the object is (an unverified AI draft, or the signed findings), one
Graphic Layer (C.10.7) holding, per finding, a Graphic Group (C.10.5) with a closed POLYLINE in
PIXEL units and a text label (C.10.5 Graphic Annotation), plus one warning text in DISPLAY units.
The Softcopy Presentation LUT (C.11.6) is INVERSE for MONOCHROME1 images because a presentation
state replaces the image's own polarity; the VOI window comes from the image when it has one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from highdicom import PresentationLUTShapeValues, PresentationLUTTransformation
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicGroup,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    GrayscaleSoftcopyPresentationState,
    TextObject,
)
from pydicom import Dataset

from report_drafts.builders._dicom import MANUFACTURER, check_uid, new_uid, prepared_source
from report_drafts.content import DEMO_WARNING, DRAFT_WARNING, Algorithm, Finding
from report_drafts.text_safety import clean_text, dicom_character_set, fit

#: Graphic Layer (0070,0002) is a CS: at most 16 characters of A-Z, 0-9, space and underscore.
GRAPHIC_LAYER = "RADDRAFT AI"
DRAFT_CONTENT_LABEL = "AI_DRAFT"
SIGNED_CONTENT_LABEL = "AI_SIGNED"
GSPS_SERIES_DESCRIPTION = "RadDraft AI boxes"

_CS_RE = re.compile(r"^[A-Z0-9_ ]{1,16}$")


def check_code_string(value: str, what: str) -> str:
    """Refuse a value that is not a valid CS (PS3.5 6.2): 16 chars of A-Z 0-9 _ space."""
    if not _CS_RE.match(value):
        raise ValueError(f"{what} must be 1-16 characters of A-Z, 0-9, _ and space: {value!r}")
    return value


def description(*, signed: bool, demo: bool) -> str:
    """Content Description (LO, 64 chars): what the reader is looking at."""
    if signed:
        text = "AI findings signed by a radiologist"
        return f"DEMO model. {text}" if demo else text
    if demo:
        return "DEMO model, unverified AI draft: not reviewed by a radiologist"
    return DRAFT_WARNING


def warning_text(*, signed: bool, demo: bool) -> str:
    """The text drawn on the image itself, so a viewer that ignores labels still shows it."""
    lines = []
    if demo:
        lines.append(DEMO_WARNING.upper())
    lines.append("AI FINDINGS, SIGNED" if signed else DRAFT_WARNING.upper())
    return " / ".join(lines)


def _group_label(finding: Finding) -> str:
    """Graphic Group Label (LO, 64 chars) of a finding, its free text cleaned."""
    return fit(clean_text(finding.label).strip() or "finding", 64)


def _finding_label(finding: Finding) -> str:
    label = clean_text(finding.label).strip() or "finding"
    if finding.laterality:
        label = f"{clean_text(finding.laterality)} {label}"
    if finding.certainty is not None:
        label = f"{label} ({finding.certainty:.0%})"
    return fit(label, 64)


def _finding_objects(
    finding: Finding, group: GraphicGroup, columns: int, rows: int
) -> tuple[GraphicObject, TextObject]:
    """A closed 5-point POLYLINE around the clipped box and its label at the top-left corner."""
    assert finding.box is not None
    box = finding.box.clipped(columns, rows)
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        raise ValueError(
            f"box of finding {finding.tracking_uid} has no area inside the "
            f"{columns}x{rows} image: {finding.box}"
        )
    tracking_uid = check_uid(finding.tracking_uid, "tracking_uid")
    graphic = GraphicObject(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=np.array(box.polyline(), dtype=float),
        units=AnnotationUnitsValues.PIXEL,
        tracking_id=tracking_uid,
        tracking_uid=tracking_uid,
        graphic_group=group,
    )
    text = TextObject(
        text_value=_finding_label(finding),
        units=AnnotationUnitsValues.PIXEL,
        anchor_point=(box.x0, box.y0),
        anchor_point_visible=False,
        tracking_id=tracking_uid,
        tracking_uid=tracking_uid,
        graphic_group=group,
    )
    return graphic, text


def _presentation_lut(source: Dataset) -> PresentationLUTTransformation:
    """INVERSE for MONOCHROME1 (else the image shows inverted), IDENTITY otherwise (C.11.6)."""
    shape = (
        PresentationLUTShapeValues.INVERSE
        if source.get("PhotometricInterpretation") == "MONOCHROME1"
        else PresentationLUTShapeValues.IDENTITY
    )
    return PresentationLUTTransformation(presentation_lut_shape=shape)


def build_gsps(  # noqa: PLR0913 (one keyword per GSPS module attribute (PS3.3 A.33.1))
    source: Dataset,
    findings: Sequence[Finding],
    algorithm: Algorithm,
    *,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    institution: str,
    content_label: str | None = None,
    demo: bool | None = None,
    signed: bool = False,
    sop_instance_uid: str | None = None,
) -> GrayscaleSoftcopyPresentationState:
    """The GSPS drawing the accepted, grounded ``findings`` that lie on ``source``.

    Findings on other images and rejected findings are skipped, so the caller may pass all of a
    version's findings. ``content_label`` defaults to ``AI_DRAFT`` or ``AI_SIGNED``; ``demo``
    defaults to ``algorithm.demo``. The source is never modified.
    """
    demo = algorithm.demo if demo is None else demo
    label = check_code_string(
        content_label or (SIGNED_CONTENT_LABEL if signed else DRAFT_CONTENT_LABEL),
        "content_label",
    )
    image = prepared_source(source)
    columns, rows = int(image.Columns), int(image.Rows)
    sop_uid = str(image.SOPInstanceUID)
    mine = [
        f for f in findings if f.accepted and f.box is not None and f.sop_instance_uid == sop_uid
    ]

    layer = GraphicLayer(
        layer_name=check_code_string(GRAPHIC_LAYER, "graphic layer"),
        order=1,
        description=description(signed=signed, demo=demo),
    )
    groups: list[GraphicGroup] = []
    graphics: list[GraphicObject] = []
    texts: list[TextObject] = [
        TextObject(
            text_value=warning_text(signed=signed, demo=demo),
            units=AnnotationUnitsValues.DISPLAY,
            bounding_box=(0.01, 0.01, 0.99, 0.06),
        )
    ]
    for number, finding in enumerate(mine, start=1):
        group = GraphicGroup(
            graphic_group_id=number,
            label=_group_label(finding),
            description=f"tracking UID {finding.tracking_uid}",
        )
        graphic, text = _finding_objects(finding, group, columns, rows)
        groups.append(group)
        graphics.append(graphic)
        texts.append(text)

    charset = dicom_character_set(
        [*(_finding_label(f) for f in mine), institution, algorithm.name],
        image.get("SpecificCharacterSet"),
    )
    annotation = GraphicAnnotation(
        referenced_images=[image],
        graphic_layer=layer,
        graphic_objects=graphics or None,
        text_objects=texts,
    )
    gsps = GrayscaleSoftcopyPresentationState(
        referenced_images=[image],
        series_instance_uid=check_uid(series_instance_uid, "series_instance_uid"),
        series_number=series_number,
        sop_instance_uid=check_uid(sop_instance_uid or new_uid(), "sop_instance_uid"),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=fit(algorithm.name, 64),
        software_versions=algorithm.program_version,
        device_serial_number=fit(algorithm.version, 64),
        content_label=label,
        content_description=description(signed=signed, demo=demo),
        graphic_annotations=[annotation],
        graphic_layers=[layer],
        graphic_groups=groups or None,
        institution_name=institution,
        presentation_lut_transformation=_presentation_lut(image),
        series_description=(("DEMO " if demo else "") + GSPS_SERIES_DESCRIPTION)[:64],
        specific_character_set=charset,
    )
    if "BodyPartExamined" in image:
        gsps.BodyPartExamined = image.BodyPartExamined
    return gsps

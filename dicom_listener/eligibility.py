"""Which views an image shows, and whether a study version is a chest radiograph worth drafting.

Pure functions over the few attributes the archive records, so the completion timer, the CLI and
the tests share one rule. Terms follow PS3.3 C.8.11.5 (ViewPosition), PS3.16 CID 4010 (DX View)
and PS3.16 Annex L (BodyPartExamined defined terms).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from raddraft.settings import Settings

RADIOGRAPHY_MODALITIES = frozenset({"CR", "DX"})

# ViewPosition (0018,5101) values and View Code Sequence meanings of a frontal chest view.
_FRONTAL_POSITIONS = frozenset({"PA", "AP"})
_LATERAL_POSITIONS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
_FRONTAL_WORDS = re.compile(r"postero-?anterior|antero-?posterior|\bPA\b|\bAP\b|frontal", re.I)
_LATERAL_WORDS = re.compile(r"\blateral\b|\bLAT\b|\bLL\b|\bRL\b", re.I)

# What says "chest": BodyPartExamined defined terms and words in descriptions (a few languages
# PACS in Europe commonly use).
_CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "CHEST_ABDOMEN", "CHESTABDOMEN"})
_CHEST_WORDS = re.compile(
    r"chest|thorax|thoracic|lung|\bCXR\b|\bTHX\b|poumon|thorak|torace|t[oó]rax|"
    r"rontgen\s*thorax|pulmonary",
    re.I,
)


#: Digital X-Ray Image Storage - For Processing (PS3.4 B.5): raw detector data, not for reading.
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
#: Digital Mammography and Intra-oral For Processing, the other "for processing" classes.
_FOR_PROCESSING_CLASSES = frozenset(
    {DX_FOR_PROCESSING, "1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.1.3.1"}
)


@dataclass(frozen=True)
class ImageFacts:
    """The attributes eligibility and the CXR rule look at, for one instance."""

    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""
    view_position: str = ""
    view_code: str = ""
    image_type: str = ""  # (0008,0008), values joined by backslashes
    presentation_intent: str = ""  # (0008,0068)
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


@dataclass(frozen=True)
class ImagePolicy:
    """Which images a site drafts from (``RADDRAFT_ELIGIBLE_*`` settings); the defaults follow
    PS3.3: original images for presentation, frontal or lateral views."""

    allow_derived: bool = False
    allow_for_processing: bool = False
    allow_other_views: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ImagePolicy:
        return cls(
            allow_derived=settings.eligible_derived_images,
            allow_for_processing=settings.eligible_for_processing_images,
            allow_other_views=settings.eligible_other_views,
        )


def image_refusal(image: ImageFacts, policy: ImagePolicy = ImagePolicy()) -> str | None:
    """Why ``image`` is not read by the model, or None when it is.

    - Image Type (0008,0008) value 1 must be ORIGINAL (PS3.3 C.7.6.1.1.2): a DERIVED image
      (a secondary capture, a processed or annotated copy) is not the acquisition. An image
      without Image Type is taken as it comes (the attribute is Type 3 for some IODs).
    - Presentation Intent Type (0008,0068) FOR PROCESSING (PS3.3 C.8.11.1.1.1), or a "For
      Processing" SOP class, is raw detector data that the modality has not prepared for
      viewing.
    - View Position (0018,5101) or the View Code Sequence must say frontal (PA/AP) or lateral.
    """
    value_1 = image.image_type.split("\\")[0].strip().upper()
    if value_1 and value_1 != "ORIGINAL" and not policy.allow_derived:
        return f"Image Type {image.image_type[:40]}: not an ORIGINAL image (PS3.3 C.7.6.1.1.2)"
    for_processing = (
        image.presentation_intent.strip().upper() == "FOR PROCESSING"
        or image.sop_class_uid in _FOR_PROCESSING_CLASSES
    )
    if for_processing and not policy.allow_for_processing:
        return "Presentation Intent Type FOR PROCESSING: raw data, not for presentation"
    viewed = is_frontal(image.view_position, image.view_code) or is_lateral(
        image.view_position, image.view_code
    )
    if not viewed and not policy.allow_other_views:
        shown = image.view_position or image.view_code or "none"
        return f"view {shown[:40]} is neither frontal (PA/AP) nor lateral"
    return None


def usable(images: Iterable[ImageFacts], policy: ImagePolicy = ImagePolicy()) -> list[ImageFacts]:
    """The images the model may read (:func:`image_refusal` finds nothing against them)."""
    return [i for i in images if image_refusal(i, policy) is None]


def refusals(
    images: Iterable[ImageFacts], policy: ImagePolicy = ImagePolicy()
) -> list[tuple[str, str]]:
    """(SOP Instance UID, why) of each image left out."""
    found = []
    for image in images:
        why = image_refusal(image, policy)
        if why is not None:
            found.append((image.sop_instance_uid, why))
    return found


def is_frontal(view_position: str, view_code: str) -> bool:
    """PA or AP, by ViewPosition or, when that is empty, the View Code Sequence meaning."""
    position = view_position.strip().upper()
    if position:
        return position in _FRONTAL_POSITIONS
    return bool(_FRONTAL_WORDS.search(view_code)) and not _LATERAL_WORDS.search(view_code)


def is_lateral(view_position: str, view_code: str) -> bool:
    position = view_position.strip().upper()
    if position:
        return position in _LATERAL_POSITIONS
    return bool(_LATERAL_WORDS.search(view_code))


def has_frontal(images: Iterable[ImageFacts]) -> bool:
    return any(is_frontal(i.view_position, i.view_code) for i in images)


def has_lateral(images: Iterable[ImageFacts]) -> bool:
    return any(is_lateral(i.view_position, i.view_code) for i in images)


def says_chest(text: str) -> bool:
    return bool(_CHEST_WORDS.search(text))


def eligibility(
    study_description: str, images: list[ImageFacts], policy: ImagePolicy = ImagePolicy()
) -> tuple[bool, str | None]:
    """(eligible, why not) for a study version with ``images`` (cumulative over its versions).

    Eligible means: at least one CR/DX image; something says chest (a chest BodyPartExamined
    or Anatomic Region, or a study/series description naming the chest) and no radiograph is
    explicitly of another body part; and at least one frontal (PA/AP) radiograph among the
    images the model may read (:func:`image_refusal`: original, for presentation, frontal or
    lateral). When none is left, the reason names each image refused and why.
    """
    if not images:
        return False, "no images"
    radiographs = [i for i in images if i.modality.upper() in RADIOGRAPHY_MODALITIES]
    if not radiographs:
        modalities = sorted({i.modality or "unknown" for i in images})
        return False, f"modality {'/'.join(modalities)} is not a radiograph (CR/DX)"
    refused = refusals(radiographs, policy)
    radiographs = usable(radiographs, policy)
    if not radiographs:
        listed = "; ".join(f"{uid or 'image'}: {why}" for uid, why in refused[:5])
        more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
        return False, f"no image fit to draft from: {listed}{more}"
    parts = {i.body_part_examined.strip().upper() for i in radiographs} - {""}
    other_parts = {p for p in parts if p not in _CHEST_BODY_PARTS and not says_chest(p)}
    chest_part = bool(parts - other_parts)
    chest_text = says_chest(study_description) or any(
        says_chest(i.series_description) for i in radiographs
    )
    if other_parts and not chest_part:
        return False, f"body part {'/'.join(sorted(other_parts))} is not the chest"
    if not (chest_part or chest_text):
        return False, "nothing says chest (body part, anatomic region, study/series description)"
    if not has_frontal(radiographs):
        left_out = f"; left out: {refused[0][0] or 'image'}: {refused[0][1]}" if refused else ""
        return False, f"no frontal (PA/AP) radiograph{left_out}"
    return True, None

"""Which views an image shows, and whether a study version is a chest radiograph worth drafting.

Pure functions over the few attributes the archive records, so the completion timer, the CLI and
the tests share one rule. Terms follow PS3.3 C.8.11.5 (ViewPosition), PS3.16 CID 4010 (DX View)
and PS3.16 Annex L (BodyPartExamined defined terms).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ImageFacts:
    """The attributes eligibility and the CXR rule look at, for one instance."""

    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""
    view_position: str = ""
    view_code: str = ""


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


def eligibility(study_description: str, images: list[ImageFacts]) -> tuple[bool, str | None]:
    """(eligible, why not) for a study version with ``images`` (cumulative over its versions).

    Eligible means: at least one CR/DX image; something says chest (a chest BodyPartExamined
    or Anatomic Region, or a study/series description naming the chest) and no radiograph is
    explicitly of another body part; and at least one frontal (PA/AP) radiograph.
    """
    if not images:
        return False, "no images"
    radiographs = [i for i in images if i.modality.upper() in RADIOGRAPHY_MODALITIES]
    if not radiographs:
        modalities = sorted({i.modality or "unknown" for i in images})
        return False, f"modality {'/'.join(modalities)} is not a radiograph (CR/DX)"
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
        return False, "no frontal (PA/AP) radiograph"
    return True, None

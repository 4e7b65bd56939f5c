"""Parsing model output. Nothing here raises on model text: every parser returns a result that
says whether it understood the text, so a broken answer is recorded, never fatal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Appended in reasoning mode; the doubled braces are literal, exactly as in CheXOne's training.
REASONING_SUFFIX = " Please reason step by step, and put your final answer within \\boxed{{}}."


@dataclass(frozen=True)
class Answer:
    """A model output split into reasoning trace and answer."""

    answer: str
    reasoning: str = ""
    boxed: bool = False  # a \boxed{...} answer was found
    complete: bool = True  # False when a \boxed{ was opened but never closed


def _boxed_spans(text: str) -> list[tuple[int, int, int]]:
    """(start of the backslash, start of content, end of content) of each balanced \\boxed{...}."""
    spans: list[tuple[int, int, int]] = []
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth = 1
        index = match.end()
        while index < len(text) and depth:
            char = text[index]
            if char == "\\" and index + 1 < len(text):
                index += 2  # an escaped brace such as \{ does not count
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            index += 1
        if depth == 0:
            spans.append((match.start(), match.end(), index - 1))
        else:
            spans.append((match.start(), match.end(), -1))
    return spans


def split_reasoning(text: str) -> Answer:
    """Split a reasoning-mode output into trace and the first ``\\boxed{}`` answer.

    Without a box, the whole output is the answer (and ``boxed`` is False, to be recorded).
    ``$$\\boxed{C}$$`` and ``\\(\\boxed{C}\\)`` lose their math delimiters.
    """
    spans = _boxed_spans(text)
    if not spans:
        return Answer(answer=text.strip(), reasoning="", boxed=False)
    start, content_start, content_end = spans[0]
    trace = text[:start]
    trace = re.sub(r"(\$\$|\$|\\\[|\\\()\s*$", "", trace).strip()
    if content_end < 0:
        # An unclosed box (output cut by max_new_tokens): keep what was written.
        return Answer(
            answer=text[content_start:].strip(), reasoning=trace, boxed=True, complete=False
        )
    answer = text[content_start:content_end].strip()
    answer = re.sub(r"^\\text\{(.*)\}$", r"\1", answer, flags=re.S).strip()
    return Answer(answer=answer, reasoning=trace, boxed=True)


_LETTER_PATTERNS = (
    re.compile(r"^\s*\(?([A-Za-z])\)?\s*$"),  # "C", "(c)", "c)"
    re.compile(r"^\s*\(?([A-Za-z])\)[\s.:,]"),  # "(C) LATERAL", "b) stable"
    re.compile(r"^\s*([A-Za-z])[.:]\s"),  # "C. LATERAL", "B: no"
    re.compile(r"(?:answer|option)\s*(?:is|:)?\s*\(?([A-Za-z])\)?(?![A-Za-z])", re.I),
)


@dataclass(frozen=True)
class Choice:
    """The option a multiple-choice answer picked; index is None when it was not understood."""

    index: int | None
    letter: str | None
    text: str | None


def parse_choice(answer: str, options: list[str]) -> Choice:
    """Which of ``options`` (in order (a), (b), ...) an answer picks.

    Accepts the letter alone or in brackets, "(b) AP", the option's text ("LATERAL", "Yes"), and
    phrases such as "The answer is C". An answer that opens with one option's text as a sentence
    of its own ("Yes, there is a small effusion. No pneumothorax.") picks that option whatever
    the free text after it says. Letters beyond the options, or text naming several options
    otherwise, give ``Choice(None, ...)``.
    """
    text = answer.strip().strip("$").strip()
    text = re.sub(r"^\\boxed\{(.*)\}$", r"\1", text, flags=re.S).strip()
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(text)
        if match:
            index = ord(match.group(1).lower()) - ord("a")
            if 0 <= index < len(options):
                return Choice(index, chr(ord("A") + index), options[index])
            # A single out-of-range letter: still try the option texts below.
            break
    lowered = text.lower()
    leading = _leading_option(lowered, options)
    if leading is not None:
        return Choice(leading, chr(ord("A") + leading), options[leading])
    hits = [
        i
        for i, option in enumerate(options)
        if re.search(r"(?<![a-z])" + re.escape(option.lower()) + r"(?![a-z])", lowered)
    ]
    if len(hits) == 1:
        index = hits[0]
        return Choice(index, chr(ord("A") + index), options[index])
    return Choice(None, None, None)


# Markdown emphasis the model sometimes puts around its first word ("**Yes**, ...").
_LEADING_NOISE = re.compile(r"^[\s*_`\"']+")


def _leading_option(lowered: str, options: list[str]) -> int | None:
    """The option whose text opens the answer and is closed by punctuation or the end.

    "Yes, there is ..." and "No. ..." qualify; "Yes and no" does not (the option is not a
    sentence of its own there), so it still falls through to the several-options rule.
    """
    text = _LEADING_NOISE.sub("", lowered)
    for index, option in enumerate(options):
        pattern = re.escape(option.lower()) + r"[\s*_`\"']*(?:[,.;:!\u2013\u2014-]|$)"
        if re.match(pattern, text):
            return index
    return None


_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_POINT_PAIR = re.compile(
    rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*,?\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)"
)
_REF_BOX = re.compile(
    r"(?:<\|ref\|>(?P<label>.*?)<\|/ref\|>\s*)?<\|box\|>(?P<body>.*?)(?:<\|/box\|>|$)", re.S
)
_QWEN_REF_BOX = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>\s*)?"
    r"<\|box_start\|>(?P<body>.*?)(?:<\|box_end\|>|$)",
    re.S,
)
# Qwen2.5-VL's quadrilateral: four corners; the box is their bounding rectangle.
_QWEN_QUAD = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>[^<]{0,200})<\|object_ref_end\|>\s*)?"
    r"<\|quad_start\|>(?P<body>[^<]{0,400})(?:<\|quad_end\|>|$)"
)
_POINT = re.compile(rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)")
_BRACKET_BOX = re.compile(
    rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]"
)
_NEGATIVE = re.compile(
    r"\bno\s+(?P<target>[^.<>\n]*?)\s*(?:is\s+|are\s+)?(?:detected|seen|present|identified)\b", re.I
)


@dataclass(frozen=True)
class ParsedBox:
    """A box in the model's terms: percent (0-100) of the model image, (x1, y1) top-left."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    clipped: bool = False  # coordinates were outside 0-100 and were clipped


@dataclass
class BoxParse:
    """What a grounding answer said."""

    boxes: list[ParsedBox] = field(default_factory=list)
    negative: bool = False  # "No {target} detected."
    rejected: list[str] = field(default_factory=list)  # box-like fragments that were not valid
    understood: bool = True  # False when neither a box nor a negative answer was found


# Coordinates this far outside 0-100 are nonsense rather than rounding, and are rejected.
_CLIP_TOLERANCE = 5.0


def _make_box(label: str, values: list[float], scale: float) -> ParsedBox | str:
    """A ParsedBox from four numbers, clipped to 0-100, or a reason for rejecting them."""
    x1, y1, x2, y2 = (v * scale for v in values)
    if any(v < -_CLIP_TOLERANCE or v > 100.0 + _CLIP_TOLERANCE for v in (x1, y1, x2, y2)):
        return f"coordinates out of range: {values}"
    clipped = any(v < 0.0 or v > 100.0 for v in (x1, y1, x2, y2))
    x1, y1, x2, y2 = (min(max(v, 0.0), 100.0) for v in (x1, y1, x2, y2))
    x1, x2 = min(x1, x2), max(x1, x2)  # a box written right-to-left still means the same region
    y1, y2 = min(y1, y2), max(y1, y2)
    if x2 - x1 <= 0.0 or y2 - y1 <= 0.0:
        return f"empty box: {values}"
    return ParsedBox(label.strip(), x1, y1, x2, y2, clipped)


def _parse_quads(
    text: str, default_label: str, scale: float, result: BoxParse
) -> list[tuple[int, int]]:
    """Qwen's ``<|quad_start|>`` quadrilaterals into ``result`` as their bounding boxes; the
    spans read."""
    spans: list[tuple[int, int]] = []
    for match in _QWEN_QUAD.finditer(text):
        spans.append(match.span())
        points = [(float(x), float(y)) for x, y in _POINT.findall(match.group("body"))]
        if len(points) != 4:
            result.rejected.append(match.group(0)[:200])
            continue
        xs, ys = [x for x, _ in points], [y for _, y in points]
        label = match.group("label") or default_label
        made = _make_box(label, [min(xs), min(ys), max(xs), max(ys)], scale)
        if isinstance(made, str):
            result.rejected.append(made)
        else:
            result.boxes.append(made)
    return spans


def parse_boxes(text: str, default_label: str = "", *, scale: float = 1.0) -> BoxParse:
    """Boxes in every form the model is known to write; see the model spec.

    ``<|ref|>x<|/ref|><|box|>(x1,y1),(x2,y2)<|/box|>`` (several concatenated, integer or decimal,
    with or without spaces), Qwen's own ``<|object_ref_start|>``/``<|box_start|>`` tokens and
    ``<|quad_start|>`` quadrilaterals (their bounding rectangle), and
    ``[x1, y1, x2, y2]``. ``scale`` converts other coordinate units to percent (0.1 for Qwen's
    0-1000 grid). "No ... detected." is a negative answer, not a failure.
    """
    result = BoxParse()
    consumed: list[tuple[int, int]] = []
    for pattern in (_REF_BOX, _QWEN_REF_BOX):
        for match in pattern.finditer(text):
            consumed.append(match.span())
            label = match.group("label") or default_label
            pair = _POINT_PAIR.search(match.group("body"))
            bracket = _BRACKET_BOX.search(match.group("body"))
            found = pair or bracket
            if not found:
                result.rejected.append(match.group(0)[:200])
                continue
            made = _make_box(label, [float(v) for v in found.groups()], scale)
            if isinstance(made, str):
                result.rejected.append(made)
            else:
                result.boxes.append(made)
    consumed.extend(_parse_quads(text, default_label, scale, result))
    outside = text
    for start, end in sorted(consumed, reverse=True):
        outside = outside[:start] + " " * (end - start) + outside[end:]
    for pattern in (_BRACKET_BOX, _POINT_PAIR):
        for match in pattern.finditer(outside):
            made = _make_box(default_label, [float(v) for v in match.groups()], scale)
            if isinstance(made, str):
                result.rejected.append(made)
            else:
                result.boxes.append(made)
            outside = (
                outside[: match.start()]
                + " " * (match.end() - match.start())
                + outside[match.end() :]
            )
    if not result.boxes and _NEGATIVE.search(text):
        result.negative = True
    result.understood = bool(result.boxes) or result.negative
    return result


_LATERALITY = (
    ("bilateral", re.compile(r"\b(bilateral(?:ly)?|both)\b", re.I)),
    ("right", re.compile(r"\bright\b", re.I)),
    ("left", re.compile(r"\bleft\b", re.I)),
)
_SITES = (
    "upper lobe",
    "middle lobe",
    "lower lobe",
    "lingula",
    "apex",
    "base",
    "costophrenic angle",
    "hilum",
    "perihilar",
    "retrocardiac",
    "mediastinum",
    "hemidiaphragm",
    "pleura",
)


def parse_laterality(text: str) -> str | None:
    """ "right", "left" or "bilateral" when the text says so unambiguously, else None."""
    found = [name for name, pattern in _LATERALITY if pattern.search(text)]
    if not found:
        return None
    if "bilateral" in found or ("right" in found and "left" in found):
        return "bilateral"
    return found[0]


def parse_site(text: str) -> str | None:
    """The first anatomical site named in ``text`` (a small fixed list), else None."""
    hits = []
    for site in _SITES:
        # Whole words only ("pleura" is not in "pleural"); plurals count ("bases").
        match = re.search(r"\b" + re.escape(site) + r"(?:s|es)?\b", text, re.I)
        if match:
            hits.append((match.start(), site))
    return min(hits)[1] if hits else None


# Tokens that must never be carried from an answer back into the prompt: chat and vision control
# tokens would desynchronise the template or the image placeholders.
CONTROL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def clean_output(text: str) -> str:
    """Model output with chat/vision control tokens and replacement characters removed."""
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    return text.replace("\ufffd", "").strip()

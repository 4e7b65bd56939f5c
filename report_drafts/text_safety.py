"""Model (and user) text made safe for every format it leaves RadDraft in.

One sanitiser between the model and everything downstream. The worker runs the draft's text
through :func:`safe_content` before :func:`report_drafts.record_draft`; the SR, HL7 and FHIR
builders run it again on what they are given, so a radiologist's edit or an older stored draft
gets the same treatment. The raw model answers stay as they were in the stored reading trace
(``draft_runs.stages``); :func:`visible` shows them without their control bytes.

What is removed or replaced, and why:

- C0 and C1 control characters and DEL (Unicode category Cc). PS3.5 6.2 allows only LF, FF, CR
  (and ESC for ISO 2022 code extensions) in ST/LT/UT values; HL7 v2 (2.7) has no escape for
  them that hl7apy keeps, and a receiver may take 0x0B / 0x1C for MLLP framing; FHIR strings
  admit only TAB, CR and LF below U+0020 (FHIR R4B datatypes, ``string``). Line ends (CR LF,
  CR, VT, FF, NEL, U+2028, U+2029) become LF and TAB a space: the text keeps its shape.
- Lone surrogates (UTF-8 cannot encode them) and Unicode noncharacters (not for interchange).
- Bidirectional embedding, override and isolate controls (U+202A-202E, U+2066-2069): they can
  make a report read differently from what it says ("Trojan Source", CVE-2021-42574).

- Model control tokens (``<|im_end|>``, ``<|box_start|>``, ``<|quad_start|>``,
  ``<|object_ref_start|>``, CheXOne's ``<|ref|>``/``<|box|>``, any ``<|name|>``): they are the
  model's markup, not report prose, and a receiver would show them verbatim. A box or quad
  with its coordinates goes whole (``models`` parses the grounding answers into findings before
  this; what reaches a report text is a leak); a referred phrase keeps its words. Each removal
  is counted as ``token <name>``, so the draft is flagged like any other removal. The staged
  reading's own report texts (``extra["staged_report"]``, the alternative text) get the same.

Everything else passes unchanged, non-Latin scripts included: the SR then declares ISO_IR 192
(:func:`dicom_character_set`, PS3.3 C.12.1.1.2) and the HL7 message ``UNICODE UTF-8`` (MSH-18,
HL7 table 0211).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from report_drafts.content import Finding, ReportContent

#: Key of ``ReportContent.extra`` that records what was taken out of which field.
SANITISED_KEY = "sanitised"
#: Specific Character Set (0008,0005) for UTF-8 (PS3.3 C.12.1.1.2, Table C.12-5).
UTF8_CHARSET = "ISO_IR 192"
#: MSH-18 character set for UTF-8 (HL7 v2.5.1 table 0211).
HL7_UTF8 = "UNICODE UTF-8"

_LINE_BREAKS = {"\r\n": "\n", "\r": "\n", "\x0b": "\n", "\x0c": "\n", "\x85": "\n"}
_LINE_BREAKS.update({"\u2028": "\n", "\u2029": "\n"})
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Control pictures (U+2400 block) for C0 controls and DEL, as shown by :func:`visible`.
_PICTURES = {chr(code): chr(0x2400 + code) for code in range(0x20)} | {"\x7f": "\u2421"}


def _unsafe(char: str) -> bool:
    """Whether ``char`` is dropped (line breaks and TAB are mapped before this is asked)."""
    code = ord(char)
    if char == "\n":
        return False
    category = unicodedata.category(char)
    if category in ("Cc", "Cs"):
        return True
    if char in _BIDI_CONTROLS:
        return True
    # Noncharacters: U+FDD0-FDEF and the last two code points of every plane.
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


@dataclasses.dataclass(frozen=True)
class Cleaned:
    """A text made safe, and what was removed from it (``U+XXXX`` -> count)."""

    text: str
    removed: dict[str, int]


#: A box or quad with its coordinates (Qwen2.5-VL's and CheXOne's markup); the body is bounded
#: so an unclosed start cannot make the search quadratic.
_COORDINATE_SPAN = re.compile(
    r"<\|(box_start|quad_start|box)\|>[^<]{0,256}(?:<\|(?:box_end|quad_end|/box)\|>)?"
)
#: Any other control token: ``<|name|>`` or ``<|/name|>``.
_CONTROL_TOKEN = re.compile(r"<\|/?([A-Za-z][A-Za-z0-9_]{0,40})\|>")


def _strip_tokens(text: str, removed: Counter[str]) -> str:
    """``text`` without model control tokens; each counted as ``token <name>``."""
    if "<|" not in text:
        return text

    def drop(match: re.Match[str]) -> str:
        removed[f"token {match.group(1)}"] += 1
        return ""

    stripped = _CONTROL_TOKEN.sub(drop, _COORDINATE_SPAN.sub(drop, text))
    # What a removed span leaves is a gap, not an indentation: collapse it.
    return "\n".join(re.sub(r" {2,}", " ", line).strip(" ") for line in stripped.split("\n"))


def clean(text: str) -> Cleaned:
    """``text`` with line ends as LF, TAB as a space, model control tokens and every unsafe
    character removed."""
    for before, after in _LINE_BREAKS.items():
        text = text.replace(before, after)
    text = text.replace("\t", " ")
    removed: Counter[str] = Counter()
    kept: list[str] = []
    for char in text:
        if _unsafe(char):
            removed[f"U+{ord(char):04X}"] += 1
        else:
            kept.append(char)
    # Tokens last: a control byte inside a token must not hide it from the search.
    return Cleaned(_strip_tokens("".join(kept), removed), dict(removed))


def clean_text(text: str) -> str:
    """Just the safe text of :func:`clean`."""
    return clean(text).text


def visible(text: str) -> str:
    """``text`` for display with its unsafe characters shown, not acted on.

    C0 controls and DEL become their control pictures (U+2400 block, e.g. 0x02 as ``␂``),
    other unsafe characters ``<U+XXXX>``; LF stays, TAB and CR are shown too. For the raw
    model answers in ``raddraft trace`` and the review page's stage list.
    """
    shown: list[str] = []
    for char in text:
        if char == "\n":
            shown.append(char)
        elif char in _PICTURES:
            shown.append(_PICTURES[char])
        elif _unsafe(char) or char in _LINE_BREAKS:
            shown.append(f"<U+{ord(char):04X}>")
        else:
            shown.append(char)
    return "".join(shown)


def _clean_finding(finding: Finding, removed: dict[str, dict[str, int]], index: int) -> Finding:
    changes: dict[str, Any] = {}
    for name in ("label", "site", "laterality"):
        value = getattr(finding, name)
        if isinstance(value, str):
            result = clean(value)
            if result.removed:
                removed[f"findings[{index}].{name}"] = result.removed
                changes[name] = result.text
    return dataclasses.replace(finding, **changes) if changes else finding


def safe_content(content: ReportContent) -> ReportContent:
    """``content`` with every free-text field cleaned (:func:`clean`).

    What was removed is recorded in ``extra["sanitised"]`` (field -> {``U+XXXX``: count}), merged
    with an earlier record, so the review page can say the model's text was changed. Content
    that is already safe comes back as the same object.
    """
    removed: dict[str, dict[str, int]] = {}
    changes: dict[str, Any] = {}
    for name in ("findings_text", "impression", "progression"):
        result = clean(getattr(content, name))
        if result.removed:
            removed[name] = result.removed
            changes[name] = result.text
    findings = tuple(_clean_finding(f, removed, i) for i, f in enumerate(content.findings))
    if findings != content.findings:
        changes["findings"] = findings
    staged = _clean_texts(content.extra.get(STAGED_KEY), removed)
    if not changes and staged is None:
        return content
    extra = dict(content.extra)
    if staged is not None:
        extra[STAGED_KEY] = staged
    extra[SANITISED_KEY] = {**dict(extra.get(SANITISED_KEY) or {}), **removed}
    return dataclasses.replace(content, extra=extra, **changes)


#: Key of ``ReportContent.extra`` holding the staged reading's report texts (by field).
STAGED_KEY = "staged_report"


def _clean_texts(texts: object, removed: dict[str, dict[str, int]]) -> dict[str, Any] | None:
    """``texts`` (field -> text) cleaned, or None when nothing in it changed."""
    if not isinstance(texts, Mapping):
        return None
    cleaned: dict[str, Any] = {}
    changed = False
    for name, value in texts.items():
        if isinstance(value, str):
            result = clean(value)
            if result.removed:
                removed[f"{STAGED_KEY}.{name}"] = result.removed
                changed = True
            cleaned[name] = result.text
        else:
            cleaned[name] = value
    return cleaned if changed else None


def removed_count(extra: Mapping[str, Any]) -> int:
    """How many characters :func:`safe_content` took out, from a content's ``extra``."""
    record = extra.get(SANITISED_KEY) or {}
    return sum(int(n) for field in record.values() for n in dict(field).values())


def fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, at a character boundary.

    DICOM length limits (PS3.5 6.2, e.g. LO 64) are checked in bytes by validators such as
    dciodvfy; with ISO_IR 192 a Greek or Chinese character takes two or three.
    """
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore").rstrip()


def needs_unicode(values: Iterable[str]) -> bool:
    """Whether any value has a character beyond ASCII (the DICOM and HL7 default repertoire)."""
    return any(not value.isascii() for value in values)


def dicom_character_set(
    values: Iterable[str], source: str | Sequence[str] | None
) -> str | Sequence[str] | None:
    """The Specific Character Set (0008,0005) for an object holding ``values`` and the source's
    own attributes (patient name and the like, declared by ``source``).

    ASCII text keeps the source's declaration (its copied values stay valid in it); anything
    beyond ASCII, in any source repertoire, gives ISO_IR 192 (UTF-8, PS3.5 6.1.2.5.3, which
    cannot be combined with code extensions): pydicom re-encodes the copied values to match.
    """
    if needs_unicode(values):
        return UTF8_CHARSET
    return source or None


def content_values(content: ReportContent) -> list[str]:
    """Every free-text value of ``content`` that reaches an SR or GSPS."""
    values = [content.findings_text, content.impression, content.progression]
    for finding in content.findings:
        values.extend(v for v in (finding.label, finding.site, finding.laterality) if v)
    if content.signer is not None:
        values.extend([content.signer.name, content.signer.organization, content.signer.login])
    return values

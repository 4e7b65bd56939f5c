"""What the draft's text says against what its findings list: nothing named is dropped silently.

The findings come from the yes/no questions over the 13 CheXpert labels (stage 2); the findings
text is written by the model separately (stage 8). This module finds the findings the text names
affirmatively (a small negation rule in the spirit of NegEx: "no", "without", "negative for" ...
earlier in the same clause negate a term) and reports those that are not among the accepted
findings, and which configured critical findings a version suspects. Pure functions over text
and :class:`~report_drafts.content.ReportContent`; nothing here knows the model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

from report_drafts.content import ReportContent
from report_drafts.vocabulary import text_terms

#: Terms a chest radiograph report uses, and the CheXpert label each belongs to (None: a
#: finding outside the 13 labels, always worth a radiologist's look when the text names it);
#: from the one coded vocabulary (:mod:`report_drafts.vocabulary`).
TERMS: dict[str, str | None] = text_terms()

# A negation cue earlier in the clause negates the term ("No pneumothorax or effusion").
_NEGATION = re.compile(
    r"\b(no|not|without|negative for|free of|absence of|absent|resolved|ruled out|rules out)\b",
    re.I,
)
# Sentences end at full stops, semicolons, colons, line ends and "but"/"however".
_SENTENCE_END = re.compile(r"[.;:\n]|\bbut\b|\bhowever\b", re.I)
_LIST_JOINER = re.compile(r"^\s*(?:or|and|nor)\s+")


def _term_pattern(term: str) -> re.Pattern[str]:
    return re.compile(r"(?<![a-z])" + re.escape(term) + r"(?![a-z])")


# Uncertainty cues (hedges): before the term ("cannot exclude a small pneumothorax") or after
# it ("pneumothorax cannot be excluded"). Looked for before negation: "can not exclude" holds a
# "not" but says "maybe".
_UNCERTAIN_BEFORE = re.compile(
    r"\b(cannot exclude|can not exclude|cannot rule out|can not rule out|possible|possibly|"
    r"questionable|equivocal|suspicious for|concerning for|suspected|may represent|"
    r"might represent|could represent|may be|suggestive of|likely)\b",
    re.I,
)
_UNCERTAIN_AFTER = re.compile(
    r"\b(cannot be excluded|can not be excluded|not excluded|cannot be ruled out|"
    r"not ruled out|is questioned|is suspected|not entirely excluded)\b",
    re.I,
)
# Negation after the term ("the pneumothorax has resolved", "effusion is no longer seen").
_NEGATED_AFTER = re.compile(
    r"\b(has resolved|have resolved|resolved|no longer (?:seen|present|visible|evident)|"
    r"has cleared|have cleared|is absent|are absent|not seen|not identified|excluded)\b",
    re.I,
)

PRESENT = "present"
UNCERTAIN = "uncertain"


def _assertion(before: str, after: str, negated_list: bool) -> str | None:
    """``present``, ``uncertain`` or None (negated) for a term between ``before`` and ``after``
    in its clause."""
    if _UNCERTAIN_BEFORE.search(before) or _UNCERTAIN_AFTER.search(after):
        return UNCERTAIN
    if negated_list or _NEGATION.search(before) or _NEGATED_AFTER.search(after):
        return None
    return PRESENT


def assertions(text: str, terms: Iterable[str]) -> dict[str, str]:
    """Each of ``terms`` the text names and does not negate: ``present`` or ``uncertain``.

    Negation (NegEx-like, Chapman et al. 2001): a cue before the term in its clause ("no",
    "no evidence of", "without", "resolved") or after it ("has resolved", "no longer seen"),
    and the list a negation opens ("No consolidation, effusion or pneumothorax"). Uncertainty:
    a hedge before ("cannot exclude", "possible", "suspicious for") or after ("cannot be
    excluded"). A term named present anywhere is present; else uncertain if hedged anywhere.
    """
    ordered = sorted(dict.fromkeys(t.lower() for t in terms), key=len, reverse=True)
    patterns = [(term, _term_pattern(term)) for term in ordered]
    found: dict[str, str] = {}
    for sentence in _SENTENCE_END.split(text.lower()):
        negated_list = False
        parts = sentence.split(",")
        for index, part in enumerate(parts):
            rest = _LIST_JOINER.sub("", part.strip())
            if not any(rest.startswith(term) for term in ordered):
                negated_list = False
            for term, pattern in patterns:
                match = pattern.search(rest)
                if match is None:
                    continue
                after = rest[match.end() :]
                if not after.strip() and index + 1 < len(parts):
                    after = parts[index + 1]  # "Pneumothorax, resolved."
                status = _assertion(rest[: match.start()], after, negated_list)
                if status is not None and found.get(term) != PRESENT:
                    found[term] = status
                rest = rest[: match.start()] + " " * len(term) + rest[match.end() :]
            if _NEGATION.search(part) and not _UNCERTAIN_BEFORE.search(part):
                negated_list = True
    return found


def unlisted_findings(content: ReportContent) -> list[str]:
    """Findings the findings text and impression name that no accepted finding carries.

    A term of a label the draft lists is fine; a term of a label answered "no" (or not read),
    or of no label at all, is returned as ``"term"`` or ``"term (Label)"``.
    """
    listed = {f.label.lower() for f in content.accepted_findings}
    text = "\n".join((content.findings_text, content.impression))
    out: list[str] = []
    # The critical-findings reading: a term present or hedged is named; a negated one is not.
    for term in assertions(text, TERMS):
        label = TERMS[term]
        if label is not None and label.lower() in listed:
            continue
        named = f"{term} ({label})" if label else term
        if label is None or all(label not in o for o in out):
            out.append(named)
    return out


#: How a critical finding the text only hedges is named everywhere it goes (page, SR, HL7,
#: FHIR, notices): still an alert, marked.
UNCERTAIN_MARK = " (uncertain)"


def critical_labels(content: ReportContent, critical: Sequence[str]) -> list[str]:
    """Which configured critical findings this version suspects: an accepted finding whose
    label names one, or any text the draft carries (findings, impression, progression) naming
    one, not negated (:func:`assertions`).

    Decided: an *uncertain* critical finding ("cannot exclude pneumothorax") still alerts (a
    missed pneumothorax costs more than a needless look), marked ``"<term> (uncertain)"`` so
    the notice and the report say it is a hedge. Present wins over uncertain.
    """
    terms = [t.strip().lower() for t in critical if t.strip()]
    status: dict[str, str] = {}
    for finding in content.accepted_findings:
        label = finding.label.lower()
        for term in terms:
            if term in label:
                status[term] = PRESENT
    text = "\n".join((content.findings_text, content.impression, content.progression))
    for term, said in assertions(text, terms).items():
        if status.get(term) != PRESENT:
            status[term] = said
    return [t + (UNCERTAIN_MARK if s == UNCERTAIN else "") for t, s in status.items()]


def reconciled(content: ReportContent, critical: Sequence[str]) -> ReportContent:
    """``content`` with what its text names outside its findings and the critical findings it
    suspects recorded in ``extra`` (``unlisted_findings``, ``critical``), for every rendering."""
    extra = dict(content.extra)
    extra["unlisted_findings"] = unlisted_findings(content)
    extra["critical"] = critical_labels(content, critical)
    return dataclasses.replace(content, extra=extra)


def after_review_change(content: ReportContent, *, decided: str | None = None) -> ReportContent:
    """``content`` after a radiologist's change: the unlisted findings recomputed against the
    new text and findings, and ``decided`` (a label the radiologist just added) no longer
    waiting for review."""
    extra = dict(content.extra)
    extra["unlisted_findings"] = unlisted_findings(content)
    if decided is not None:
        extra["needs_review"] = [
            label for label in content.needs_review if label.lower() != decided.lower()
        ]
    return dataclasses.replace(content, extra=extra)


_LATERALITY_WORDS = (
    ("bilateral", re.compile(r"\b(bilateral(?:ly)?|both)\b", re.I)),
    ("right", re.compile(r"\bright\b", re.I)),
    ("left", re.compile(r"\bleft\b", re.I)),
)
#: Sites a sentence may name for a finding (the SR's site codes, report_drafts.builders).
_SITE_WORDS = ("upper lobe", "middle lobe", "lower lobe", "lingula", "apex", "base", "hilum")


def _laterality(sentence: str) -> str | None:
    found = {name for name, pattern in _LATERALITY_WORDS if pattern.search(sentence)}
    if "bilateral" in found or {"left", "right"} <= found:
        return "bilateral"
    return next(iter(found), None)


def _terms_of(label: str) -> list[str]:
    """The text terms that name a finding label (its own name included)."""
    own = label.lower()
    return sorted({own, *(t for t, lab in TERMS.items() if lab and lab.lower() == own)}, key=len)


def structure_from_text(content: ReportContent) -> tuple[ReportContent, list[dict[str, str]]]:
    """``content`` with each accepted finding's laterality, site and presence made to agree with
    the text a radiologist wrote (findings, impression): the SR's coded structure must say what
    its text says (PS3.3 C.17.3: the content tree is the report). For each finding, the
    sentences naming it affirmatively give its laterality (and site, when one is named); a
    finding the text now only negates is no longer accepted. Returns the changes made.
    """
    text = "\n".join((content.findings_text, content.impression))
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    changes: list[dict[str, str]] = []
    findings = []
    for finding in content.findings:
        if not finding.accepted:
            findings.append(finding)
            continue
        terms = _terms_of(finding.label)
        naming = [s for s in sentences if assertions(s, terms)]
        negating = [s for s in sentences if any(_term_pattern(t).search(s.lower()) for t in terms)]
        if not naming:
            if negating:
                changes.append({"finding": finding.label, "accepted": "false"})
                findings.append(dataclasses.replace(finding, accepted=False))
            else:
                findings.append(finding)
            continue
        said = " ".join(naming)
        update: dict[str, str | None] = {}
        laterality = _laterality(said)
        if laterality and laterality != finding.laterality:
            update["laterality"] = laterality
        site = next((w for w in _SITE_WORDS if re.search(rf"\b{w}s?\b", said, re.I)), None)
        if site and site != (finding.site or "").lower():
            update["site"] = site
        if update:
            changes.append({"finding": finding.label, **{k: str(v) for k, v in update.items()}})
            findings.append(dataclasses.replace(finding, **update))  # type: ignore[arg-type]
        else:
            findings.append(finding)
    if not changes:
        return content, []
    return dataclasses.replace(content, findings=tuple(findings)), changes

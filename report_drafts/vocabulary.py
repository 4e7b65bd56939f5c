"""The one coded vocabulary of chest radiograph findings, after highdicom's single code list.

Each finding the model is asked about (CheXpert's 13 observations and support devices) is one
:class:`FindingConcept`: its label (what the model answers and the draft stores), the phrase a
prompt puts inside a sentence, the name the review page offers, and its SNOMED CT code where
the DICOM content mapping resource has one (PS3.16 CID 6102 / 12248 concepts; the others get
a private ``99RADDRAFT`` code in the SR, PS3.3 8.8). :data:`TERMS` are the words a report's text
uses for them (and for findings outside the 13, label ``None``), with their own code where one
exists.

Who reads it: the SR and GSPS builders (codes), :mod:`report_drafts.reconcile` (terms), the web
tier's pages (names, through ``report_drafts``' public face) and the worker, which hands the
labels to ``models`` in its ``ReaderConfig`` (``models/`` imports no RadDraft folder; its own
default list is checked against this one by ``tests/drafts/test_vocabulary.py``). Pure data:
no imports beyond the standard library, so even the pure builders may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FINDINGS",
    "TERMS",
    "Code",
    "FindingConcept",
    "Term",
    "coded_terms",
    "labels",
    "page_names",
    "text_terms",
]


@dataclass(frozen=True)
class Code:
    """A coded concept (PS3.3 8.8): coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str


def _sct(value: str, meaning: str) -> Code:
    return Code("SCT", value, meaning)


@dataclass(frozen=True)
class FindingConcept:
    """One finding label with its prompt phrase, page name and code (None: no standard code)."""

    label: str
    code: Code | None = None

    @property
    def phrase(self) -> str:
        """The label inside a sentence ("Pleural Effusion" -> "pleural effusion"), as the
        CheXOne prompts write it ("Is there {finding} in this chest X-ray?")."""
        return self.label.strip().lower()

    @property
    def page_name(self) -> str:
        """What the review page offers when a radiologist adds a missed finding."""
        return self.label


@dataclass(frozen=True)
class Term:
    """A word or phrase for a finding: ``label`` is the concept it belongs to (None: a finding
    outside the 13 labels); ``code`` its own code where it has one; ``in_text`` whether the
    reconciliation looks for it in the report's text (some codes are for labels only)."""

    text: str
    label: str | None
    code: Code | None = None
    in_text: bool = True


# Cardiomegaly uses 287272002, the code the DICOM content mapping resource itself uses
# (CID 12248), not 8186001.
_EFFUSION = _sct("60046008", "Pleural effusion")
_EDEMA = _sct("19242006", "Pulmonary edema")
_CARDIOMEGALY = _sct("287272002", "Cardiomegaly")
_NODULE = _sct("27925004", "Nodule")

#: CheXpert's 13 observations (without "No Finding") plus support devices, in the order the
#: model is asked about them.
FINDINGS: tuple[FindingConcept, ...] = (
    FindingConcept("Enlarged Cardiomediastinum"),
    FindingConcept("Cardiomegaly", _CARDIOMEGALY),
    FindingConcept("Lung Opacity"),
    FindingConcept("Lung Lesion"),
    FindingConcept("Edema", _EDEMA),
    FindingConcept("Consolidation", _sct("95436008", "Lung consolidation")),
    FindingConcept("Pneumonia", _sct("233604007", "Pneumonia")),
    FindingConcept("Atelectasis", _sct("46621007", "Atelectasis")),
    FindingConcept("Pneumothorax", _sct("36118008", "Pneumothorax")),
    FindingConcept("Pleural Effusion", _EFFUSION),
    FindingConcept("Pleural Other"),
    FindingConcept("Fracture", _sct("125605004", "Fracture of bone")),
    FindingConcept("Support Devices"),
)

#: How a chest radiograph report names findings, and the label each belongs to.
TERMS: tuple[Term, ...] = (
    Term("pleural effusion", "Pleural Effusion"),
    Term("effusion", "Pleural Effusion", _EFFUSION),
    Term("pneumothorax", "Pneumothorax"),
    Term("cardiomegaly", "Cardiomegaly"),
    Term("enlarged heart", "Cardiomegaly"),
    Term("enlarged cardiac silhouette", "Cardiomegaly"),
    Term("pulmonary edema", "Edema", _EDEMA),
    Term("pulmonary oedema", "Edema"),
    Term("edema", "Edema"),
    Term("oedema", "Edema"),
    Term("consolidation", "Consolidation"),
    Term("pneumonia", "Pneumonia"),
    Term("atelectasis", "Atelectasis"),
    Term("opacity", "Lung Opacity"),
    Term("opacities", "Lung Opacity"),
    Term("nodule", "Lung Lesion", _NODULE),
    Term("lung nodule", "Lung Lesion", _NODULE, in_text=False),
    Term("pulmonary nodule", "Lung Lesion", _NODULE, in_text=False),
    Term("mass", "Lung Lesion", _sct("4147007", "Mass")),
    Term("fracture", "Fracture"),
    Term("widened mediastinum", "Enlarged Cardiomediastinum"),
    Term("mediastinal widening", "Enlarged Cardiomediastinum"),
    Term("enlarged cardiomediastinum", "Enlarged Cardiomediastinum"),
    Term("pleural thickening", "Pleural Other"),
    Term("endotracheal tube", "Support Devices"),
    Term("nasogastric tube", "Support Devices"),
    Term("chest tube", "Support Devices"),
    Term("central venous catheter", "Support Devices"),
    Term("pacemaker", "Support Devices"),
    Term("fibrosis", None, _sct("112674009", "Fibrosis"), in_text=False),
    Term("pneumoperitoneum", None),
    Term("free air", None),
    Term("pneumomediastinum", None),
    Term("subcutaneous emphysema", None),
    Term("hiatal hernia", None),
    Term("aortic dissection", None),
)


def labels() -> tuple[str, ...]:
    """The labels the model is asked about, in order."""
    return tuple(concept.label for concept in FINDINGS)


def page_names() -> tuple[str, ...]:
    """The names the review page offers, in the model's order."""
    return tuple(concept.page_name for concept in FINDINGS)


def coded_terms() -> dict[str, Code]:
    """Lower-case label or term -> its code: every label and term that has one."""
    coded = {concept.phrase: concept.code for concept in FINDINGS if concept.code is not None}
    coded.update({term.text: term.code for term in TERMS if term.code is not None})
    return coded


def text_terms() -> dict[str, str | None]:
    """The terms the reconciliation looks for in report text -> their label (or None)."""
    return {term.text: term.label for term in TERMS if term.in_text}

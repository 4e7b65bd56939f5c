"""What a draft says, as plain values: the shared language of the builders and the lifecycle.

The worker turns a model result into these; the SR, GSPS, FHIR and HL7 builders read them; the
draft tables store them as JSON. Nothing here knows about models, Celery or the database.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

DEMO_WARNING = "demo model, random weights, not a clinical draft"
DRAFT_WARNING = "Unverified AI draft: not reviewed by a radiologist"
CRITICAL_NOTICE = (
    "AI suspicion of a critical finding ({labels}), pending radiologist review; not a diagnosis"
)


class ReportStatus(enum.StrEnum):
    """Where a report version stands towards the RIS (FHIR DiagnosticReport.status)."""

    preliminary = "preliminary"  # an AI draft, not signed
    final = "final"  # signed by a named radiologist
    amended = "amended"  # changed after signing
    corrected = "corrected"  # an error put right after signing

    @property
    def is_signed(self) -> bool:
        """Whether this status needs a named radiologist (final, amended, corrected)."""
        return self is not ReportStatus.preliminary


@dataclass(frozen=True)
class Box:
    """A box in the stored pixel grid of the referenced image.

    Points are (column, row) as in PS3.3 C.18.6.1.1 (SCOORD): (0, 0) is the top-left corner of
    the first pixel, valid range [0, Columns] x [0, Rows].
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def clipped(self, columns: int, rows: int) -> Box:
        def clamp(value: float, top: int) -> float:
            return min(max(value, 0.0), float(top))

        x0, x1 = sorted((clamp(self.x0, columns), clamp(self.x1, columns)))
        y0, y1 = sorted((clamp(self.y0, rows), clamp(self.y1, rows)))
        return Box(x0, y0, x1, y1)

    def polyline(self) -> list[tuple[float, float]]:
        """The closed five-point POLYLINE for this box (DICOM has no RECTANGLE SCOORD)."""
        return [
            (self.x0, self.y0),
            (self.x1, self.y0),
            (self.x1, self.y1),
            (self.x0, self.y1),
            (self.x0, self.y0),
        ]


@dataclass(frozen=True)
class Finding:
    """One finding of the draft, grounded on one image when the model gave a box."""

    tracking_uid: str  # stays the same across versions of the report
    label: str  # e.g. "pleural effusion"
    sop_instance_uid: str | None = None  # the image the box is on
    box: Box | None = None
    laterality: str | None = None  # "left" | "right" | "bilateral"
    site: str | None = None  # e.g. "lower lobe of lung"
    certainty: float | None = None  # 0..1, e.g. self-consistency
    accepted: bool = True  # a radiologist's reject sets False
    added_by: str | None = None  # the radiologist who added a finding the model missed


@dataclass(frozen=True)
class Algorithm:
    """The model that wrote the draft (TID 4019 Algorithm Identification)."""

    name: str  # e.g. "StanfordAIMI/CheXOne"
    version: str  # the model revision
    program_version: str  # RadDraft's version
    demo: bool = False  # random-weight demo model: say so everywhere


@dataclass(frozen=True)
class Signer:
    """The radiologist who verified the report (TID 1002 / VerifyingObserverSequence)."""

    name: str  # DICOM PN, "Family^Given"
    login: str
    organization: str


@dataclass(frozen=True)
class ReportContent:
    """The text and findings of one version of a report."""

    findings_text: str
    impression: str
    progression: str = ""
    findings: tuple[Finding, ...] = ()
    status: ReportStatus = ReportStatus.preliminary
    signer: Signer | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted_findings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.accepted)

    @property
    def grounded_findings(self) -> tuple[Finding, ...]:
        """Accepted findings with a box on a named image: the ones drawn in SR and GSPS."""
        return tuple(f for f in self.accepted_findings if f.box is not None and f.sop_instance_uid)

    @property
    def needs_review(self) -> tuple[str, ...]:
        """Labels whose stage answers the model gave could not be read: neither yes nor no."""
        return tuple(self.extra.get("needs_review", ()))

    @property
    def unlisted(self) -> tuple[str, ...]:
        """Findings the findings text names that are not among the draft's findings."""
        return tuple(self.extra.get("unlisted_findings", ()))

    @property
    def critical(self) -> tuple[str, ...]:
        """The critical findings this version suspects (set by the lifecycle from settings)."""
        return tuple(self.extra.get("critical", ()))

    def review_notes(self) -> tuple[str, ...]:
        """What the radiologist must look at before signing; none once signed (they did)."""
        if self.status.is_signed:
            return ()
        notes: list[str] = []
        if self.critical:
            notes.append(CRITICAL_NOTICE.format(labels=", ".join(self.critical)))
        if self.needs_review:
            notes.append(
                "Needs review: the model's answer could not be read for "
                + ", ".join(self.needs_review)
            )
        if self.unlisted:
            notes.append(
                "Named in the findings text but not among the findings: " + ", ".join(self.unlisted)
            )
        return tuple(notes)

    def check_consistent(self) -> None:
        """Refuse a signed status without a signer: nothing AI-written leaves as final unsigned."""
        if self.status.is_signed and self.signer is None:
            raise ValueError(f"a {self.status.value} report needs a signer")

    def warnings(self, *, demo: bool) -> tuple[str, ...]:
        """The warnings every rendering of this version must carry (demo model, unsigned draft)."""
        found: list[str] = []
        if demo:
            found.append(DEMO_WARNING)
        if not self.status.is_signed:
            found.append(DRAFT_WARNING)
        return tuple(found)

    def sections(self, *, demo: bool) -> tuple[tuple[str, str], ...]:
        """(heading, text) pairs in report order; empty sections left out, warnings last."""
        parts = [
            ("FINDINGS", self.findings_text.strip()),
            ("IMPRESSION", self.impression.strip()),
            ("COMPARISON", self.progression.strip()),
        ]
        found = [(heading, text) for heading, text in parts if text]
        notes = self.review_notes()
        if notes:
            found.append(("REVIEW", "\n".join(notes)))
        warnings = self.warnings(demo=demo)
        if warnings:
            found.append(("WARNING", "\n".join(warnings)))
        return tuple(found)

    def text(self, *, demo: bool) -> str:
        """The full plain-text report (FHIR presentedForm, HL7 OBX lines), warnings included."""
        return "\n\n".join(f"{heading}:\n{body}" for heading, body in self.sections(demo=demo))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReportContent:
        findings = tuple(
            Finding(**{**f, "box": Box(**f["box"]) if f.get("box") else None})
            for f in data.get("findings", ())
        )
        signer = Signer(**data["signer"]) if data.get("signer") else None
        return cls(
            findings_text=data["findings_text"],
            impression=data["impression"],
            progression=data.get("progression", ""),
            findings=findings,
            status=ReportStatus(data.get("status", ReportStatus.preliminary)),
            signer=signer,
            extra=dict(data.get("extra", {})),
        )

"""Public plain types: the reader's configuration, its input images and its typed result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from models._images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, Geometry
from models._prompts import DEFAULT_FINDINGS

PROGRAM_VERSION = "raddraft-cxrtrek/1.0"
CHEXONE_ID = "StanfordAIMI/CheXOne"
DEMO_LABEL = "demo model, random weights, not a clinical draft"


@dataclass(frozen=True)
class ReaderConfig:
    """Everything :func:`models.load_reader` needs; the worker fills it from settings.

    ``model``: ``auto`` (CheXOne if it loads, else the tiny demo model), ``tiny``, a hub id or a
    local folder. ``reasoning_stages``: stage numbers (1-8) asked in reasoning mode.
    ``consistency_samples``: 0 for none, else that many sampled answers per stage-2 question.
    ``branch_stages``: stages whose independent questions run as branches of the shared prefix
    (each sees the conversation up to the stage, not its sibling questions).
    ``max_new_tokens`` / ``max_new_tokens_reasoning``: the answer limit per mode (the paper
    decodes up to 2048 tokens in reasoning mode). ``report_source``: which texts and boxes feed
    the report: ``single_turn`` (CheXOne's trained form: a fresh one-turn conversation per text
    under the stock system prompt) or ``staged`` (stage 3 and stage 8 of the CXRTrek reading).
    ``consistency_labels``: the vocabulary labels sampled for confidence (empty: all).
    """

    model: str = "auto"
    data_dir: Path = Path("data")
    backend: Literal["transformers", "openai"] = "transformers"
    device: str = "auto"
    dtype: str = "auto"
    server_url: str = ""
    reasoning_stages: frozenset[int] = frozenset()
    max_new_tokens: int = 512
    max_new_tokens_reasoning: int = 2048
    report_source: Literal["single_turn", "staged"] = "single_turn"
    # Random weights write noise until the token limit; a short one keeps demo mode quick on a
    # laptop CPU without changing anything a real model does.
    demo_max_new_tokens: int = 32
    prefix_cache: bool = True
    findings_vocabulary: tuple[str, ...] = DEFAULT_FINDINGS
    consistency_samples: int = 0
    consistency_temperature: float = 0.7
    consistency_labels: tuple[str, ...] = ()
    branch_stages: frozenset[int] = frozenset()
    grounding_hint: bool = True
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    revision: str | None = None
    seed: int = 0
    server_timeout_seconds: float = 600.0
    # The transformers engine's key/value store, GiB; 0: 80% of a GPU's free memory once the
    # model is loaded, 4 GiB on a CPU.
    kv_cache_gib: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, as recorded in every reading."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[item.name] = value
        return out


@dataclass(frozen=True)
class ModelInfo:
    """Which model answered: its id, revision, backend and whether it is the demo model."""

    model_id: str
    revision: str | None
    demo: bool
    backend: str
    source: str  # the folder or hub id it was loaded from (the server URL for ``openai``)

    @property
    def label(self) -> str:
        """What every page and message must say about this model ("" for a real model)."""
        return DEMO_LABEL if self.demo else ""


@dataclass(frozen=True)
class StudyImage:
    """One input image: a pydicom Dataset, a DICOM file, or a plain picture (PIL or path).

    ``sop_instance_uid`` is filled from the dataset when not given, so boxes can name the
    instance they belong to.
    """

    dataset: Any = None  # pydicom.Dataset
    path: Path | None = None
    picture: Any = None  # PIL.Image.Image, for non-DICOM input (tests, demos)
    sop_instance_uid: str | None = None

    @classmethod
    def from_path(cls, path: str | Path) -> StudyImage:
        """A DICOM file (``.png``/``.jpg`` are read as plain pictures)."""
        return cls(path=Path(path))

    @classmethod
    def from_dataset(cls, dataset: Any) -> StudyImage:
        """A decoded pydicom Dataset."""
        uid = getattr(dataset, "SOPInstanceUID", None)
        return cls(dataset=dataset, sop_instance_uid=str(uid) if uid else None)


@dataclass
class Box:
    """A box on one image, in stored-pixel coordinates (column, row; (0, 0) top-left corner)."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    image_index: int  # index into Reading.images
    sop_instance_uid: str | None
    stage: int  # 3 for the staged reading's grounding, 0 for the single-turn report prompt
    model_percent: tuple[float, float, float, float]  # the box as the model wrote it (0-100)
    clipped: bool = False


@dataclass
class Finding:
    """One vocabulary finding as the reading saw it."""

    label: str
    present: bool | None  # None when the presence answer was not understood
    stage: int = 2
    presence_answer: str = ""
    confidence: float | None = None  # self-consistency (normalised negative entropy), if run
    attributes: str = ""
    laterality: str | None = None
    site: str | None = None
    boxes: list[Box] = field(default_factory=list)  # from the source that feeds the report
    grounding_source: str = ""  # "single-turn" or "stage 3": which prompt gave ``boxes``
    staged_boxes: list[Box] = field(default_factory=list)  # stage 3's, kept beside single-turn
    grounding_negative: bool = False  # the model said "No ... detected." when asked to locate it
    progression: str | None = None  # worsening / stable / improving, with a prior


@dataclass
class Turn:
    """One question and its answer within a stage."""

    kind: str  # view, quality, presence, attributes, grounding, relations, progression, ...
    question: str
    answer: str
    raw: str  # the model's whole output
    reasoning: str = ""
    mode: Literal["instruction", "reasoning"] = "instruction"
    target: str | None = None  # the finding a per-finding question is about
    boxed_missing: bool = False  # reasoning mode without a \boxed{} answer
    parsed: bool = True  # False when the answer could not be understood for its kind
    parse_note: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str = ""
    truncated: bool = False  # cut by the token limit: the answer is incomplete
    conversation: Literal["cxrtrek", "single-turn"] = "cxrtrek"
    images: list[int] = field(default_factory=list)  # Reading.images indices this turn added
    samples: list[str] = field(default_factory=list)  # self-consistency answers, if any


@dataclass
class StageResult:
    """One of the eight stages."""

    stage: int
    name: str
    mode: Literal["instruction", "reasoning"]
    turns: list[Turn] = field(default_factory=list)
    skipped: bool = False
    skip_reason: str = ""
    seconds: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return sum(t.prompt_tokens for t in self.turns)

    @property
    def completion_tokens(self) -> int:
        return sum(t.completion_tokens for t in self.turns)


@dataclass
class ImageInfo:
    """An image the model saw, and how to map its boxes back."""

    index: int
    role: Literal["current", "prior"]
    sop_instance_uid: str | None
    source: str  # file path or "dataset" / "picture"
    geometry: Geometry
    view_position: str | None = None  # from the DICOM header, when present


@dataclass
class Reading:
    """The typed result of one staged reading. ``to_json()`` gives the stored form."""

    model: ModelInfo
    settings: dict[str, Any]
    program_version: str
    images: list[ImageInfo]
    stages: list[StageResult]
    findings: list[Finding]
    indication: str | None = None
    view: str | None = None
    quality: str | None = None
    quality_warnings: list[str] = field(default_factory=list)
    findings_text: str = ""
    impression: str = ""
    progression_text: str = ""
    relations_text: str = ""
    trend_text: str = ""
    advice_text: str = ""
    report_source: str = "staged"  # which conversation wrote findings_text, impression, ...
    text_sources: dict[str, str] = field(default_factory=dict)  # text -> the prompt it came from
    report_turns: list[Turn] = field(default_factory=list)  # the single-turn report prompts
    staged_report: dict[str, str] = field(default_factory=dict)  # stage 8's (and 5's) own texts
    unparsed: list[str] = field(default_factory=list)  # one line per answer not understood
    truncated: list[str] = field(default_factory=list)  # one line per answer cut by the limit
    draft_seconds: float = 0.0  # from the start to everything the report needs (the draft)
    total_seconds: float = 0.0  # from the start to the complete trace

    @property
    def demo(self) -> bool:
        """True when a random-weight demo model wrote this: label it, never send it as clinical."""
        return self.model.demo

    @property
    def positive_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.present]

    @property
    def boxes(self) -> list[Box]:
        return [box for finding in self.findings for box in finding.boxes]

    @property
    def prompt_tokens(self) -> int:
        """Over the staged reading and the single-turn report prompts."""
        return sum(s.prompt_tokens for s in self.stages) + sum(
            t.prompt_tokens for t in self.report_turns
        )

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.stages) + sum(
            t.completion_tokens for t in self.report_turns
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionaries and lists (with the demo label spelled out)."""
        data = asdict(self)
        data["demo"] = self.demo
        data["model"]["label"] = self.model.label
        for image, info in zip(data["images"], self.images, strict=True):
            image["geometry"] = info.geometry.to_dict()
        data["prompt_tokens"] = self.prompt_tokens
        data["completion_tokens"] = self.completion_tokens
        return data

    def to_json(self, **kwargs: Any) -> str:
        """The reading as JSON text (``kwargs`` go to ``json.dumps``, e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

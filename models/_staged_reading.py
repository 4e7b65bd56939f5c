"""The eight-stage CXRTrek reading, driven by CheXOne's prompts, as one growing conversation.

Each question is a user turn; the model's (cleaned) output is kept as the assistant turn, so later
stages read the model's earlier answers. The current image(s) enter with the first question; the
prior study's first image enters at stage 5 together with the current image again, prior first
(CheXOne's progression layout: "the second image" is the current one).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from models import _prompts as P
from models._backend import Backend, Conversation, DecodeOptions, Generation, Message
from models._images import prepare_image, prepare_pil
from models._parse import (
    REASONING_SUFFIX,
    BoxParse,
    parse_boxes,
    parse_choice,
    parse_laterality,
    parse_site,
    split_reasoning,
)
from models._types import (
    PROGRAM_VERSION,
    Box,
    Finding,
    ImageInfo,
    ModelInfo,
    ReaderConfig,
    Reading,
    StageResult,
    StudyImage,
    Turn,
)

_PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_FRONTAL = {"PA", "AP"}


@dataclass
class _Prepared:
    image: Image.Image
    info: ImageInfo


def _prepare(
    study_image: StudyImage, index: int, role: Literal["current", "prior"], config: ReaderConfig
) -> _Prepared:
    """Decode and prepare one input image; record where it came from."""
    kwargs = {"min_pixels": config.min_pixels, "max_pixels": config.max_pixels}
    uid = study_image.sop_instance_uid
    view_position: str | None = None
    if study_image.picture is not None:
        image, geometry = prepare_pil(study_image.picture, **kwargs)
        source = "picture"
    elif (
        study_image.dataset is None
        and study_image.path is not None
        and (Path(study_image.path).suffix.lower() in _PICTURE_SUFFIXES)
    ):
        with Image.open(study_image.path) as picture:
            image, geometry = prepare_pil(picture, **kwargs)
        source = str(study_image.path)
    else:
        dataset = study_image.dataset
        if dataset is None:
            import pydicom

            dataset = pydicom.dcmread(str(study_image.path))
            source = str(study_image.path)
        else:
            source = "dataset"
        image, geometry = prepare_image(dataset, **kwargs)
        uid = uid or (str(dataset.SOPInstanceUID) if "SOPInstanceUID" in dataset else None)
        view_position = str(getattr(dataset, "ViewPosition", "") or "").upper() or None
    info = ImageInfo(index, role, uid, source, geometry, view_position)
    return _Prepared(image, info)


def _frontal_first(prepared: list[_Prepared]) -> list[_Prepared]:
    """Frontal views (ViewPosition PA/AP) before others, otherwise in the given order: the
    boxes of the grounding questions are read on the first current image."""
    return sorted(prepared, key=lambda p: 0 if p.info.view_position in _FRONTAL else 1)


def consistency(answers: Sequence[int | None], n_options: int) -> float:
    """Normalised negative entropy of sampled multiple-choice answers: 1 when all agree, 0 when
    spread evenly over every option and "not understood" (which counts as one more outcome)."""
    if not answers:
        return 0.0
    counts = Counter(answers)
    total = len(answers)
    entropy = -sum((c / total) * math.log(c / total) for c in counts.values())
    return 1.0 - entropy / math.log(n_options + 1)


def _context_text(turn: Turn) -> str:
    """What stays in the conversation as the model's answer: in reasoning mode the boxed
    answer without its trace (traces of up to 2048 tokens over some 25 turns would overrun
    CheXOne's 32k context); the whole output when no box was found."""
    if turn.mode == "reasoning" and not turn.boxed_missing:
        return turn.answer
    return turn.raw


class _Session:
    """One reading in progress: the conversation, its stages and the images it uses."""

    def __init__(self, backend: Backend, config: ReaderConfig, system: str) -> None:
        self.backend = backend
        self.config = config
        self.conversation = Conversation(system, ())
        self.stages: list[StageResult] = []

    def mode(self, stage: int) -> Literal["instruction", "reasoning"]:
        return "reasoning" if stage in self.config.reasoning_stages else "instruction"

    def begin(self, stage: int) -> StageResult:
        result = StageResult(stage=stage, name=P.STAGE_NAMES[stage], mode=self.mode(stage))
        self.stages.append(result)
        return result

    def _options(self) -> DecodeOptions:
        return DecodeOptions(max_new_tokens=self.config.max_new_tokens, seed=self.config.seed)

    def _turn(
        self,
        stage: StageResult,
        kind: str,
        question: str,
        generation: Generation,
        target: str | None,
        images: list[int],
    ) -> Turn:
        raw = generation.text
        turn = Turn(
            kind=kind,
            question=question,
            answer=raw,
            raw=raw,
            mode=stage.mode,
            target=target,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=sum(generation.completion_tokens),
            cached_tokens=generation.cached_tokens,
            seconds=generation.total_seconds,
            finish_reason=generation.finish_reasons[0] if generation.finish_reasons else "",
            images=images,
        )
        if stage.mode == "reasoning":
            split = split_reasoning(raw)
            turn.answer, turn.reasoning = split.answer, split.reasoning
            turn.boxed_missing = not split.boxed
        stage.turns.append(turn)
        return turn

    def _prompt(self, stage: StageResult, question: str) -> str:
        return question + REASONING_SUFFIX if stage.mode == "reasoning" else question

    def ask(
        self,
        stage: StageResult,
        kind: str,
        question: str,
        *,
        images: Sequence[tuple[int, Image.Image]] = (),
        target: str | None = None,
        sample: bool = False,
    ) -> Turn:
        """Ask one question as the next user turn and keep the answer in the conversation.

        With ``sample``, also draw ``consistency_samples`` sampled answers to the very same
        conversation (right away, while the prefix cache still holds it); they stay out of the
        conversation and land in ``Turn.samples``.
        """
        prompt = self._prompt(stage, question)
        asked = self.conversation.then(Message("user", prompt, tuple(image for _, image in images)))
        generation = self.backend.generate(asked, self._options())
        turn = self._turn(stage, kind, prompt, generation, target, [i for i, _ in images])
        self.conversation = asked.then(Message("assistant", _context_text(turn)))
        if sample:
            turn.samples = self._sample(asked)
        return turn

    def ask_all(
        self,
        stage: StageResult,
        kind: str,
        questions: Sequence[tuple[str, str | None]],
        *,
        sample: bool = False,
    ) -> list[Turn]:
        """Text-only questions of one stage: in turn, or as branches of the shared prefix when
        the stage is in ``branch_stages`` (each then sees the conversation up to the stage, not
        its siblings; all questions and answers join the conversation afterwards, in order)."""
        if stage.stage not in self.config.branch_stages or len(questions) < 2:
            return [self.ask(stage, kind, q, target=t, sample=sample) for q, t in questions]
        prompts = [self._prompt(stage, q) for q, _ in questions]
        branches = [self.conversation.then(Message("user", p)) for p in prompts]
        generations = self.backend.generate_batch(branches, self._options())
        turns = []
        for prompt, (_, target), generation, branch in zip(
            prompts, questions, generations, branches, strict=True
        ):
            turn = self._turn(stage, kind, prompt, generation, target, [])
            self.conversation = self.conversation.then(
                Message("user", prompt), Message("assistant", _context_text(turn))
            )
            if sample:
                turn.samples = self._sample(branch)
            turns.append(turn)
        return turns

    def _sample(self, asked: Conversation) -> list[str]:
        """``consistency_samples`` answers sampled at ``consistency_temperature``."""
        options = DecodeOptions(
            max_new_tokens=self.config.max_new_tokens,
            do_sample=True,
            temperature=self.config.consistency_temperature,
            n=self.config.consistency_samples,
            seed=self.config.seed,
        )
        return self.backend.generate(asked, options).texts


_BACKEND_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class Reader:
    """Runs the staged reading of one study at a time (see :func:`models.load_reader`)."""

    def __init__(self, backend: Backend, config: ReaderConfig, model: ModelInfo) -> None:
        self.backend = backend
        self.config = config
        self.model = model
        # One backend holds one KV cache: one reading at a time per backend, whichever Reader
        # (load_reader hands out a new Reader around the same cached backend each call).
        with _LOCKS_GUARD:
            self._lock = _BACKEND_LOCKS.setdefault(id(backend), threading.Lock())

    @property
    def demo(self) -> bool:
        """True for the random-weight demo model."""
        return self.model.demo

    def read(
        self,
        current: Sequence[StudyImage],
        prior: Sequence[StudyImage] | None = None,
        indication: str | None = None,
        prior_report: str | None = None,
    ) -> Reading:
        """The eight-stage reading of ``current`` (with ``prior`` for stage 5, when given).

        ``prior_report``, the prior study's signed report text, goes into stage 5's comparison
        question when there is a prior image to compare with.
        """
        if not current:
            raise ValueError("a reading needs at least one current image")
        with self._lock:
            return self._read(
                list(current),
                list(prior or []),
                (indication or "").strip() or None,
                (prior_report or "").strip() or None,
            )

    def _read(
        self,
        current: list[StudyImage],
        prior: list[StudyImage],
        indication: str | None,
        prior_report: str | None,
    ) -> Reading:
        started = time.perf_counter()
        config = self.config
        now = _frontal_first([_prepare(img, i, "current", config) for i, img in enumerate(current)])
        before = [_prepare(img, len(now) + i, "prior", config) for i, img in enumerate(prior)]
        for index, item in enumerate(now):
            item.info.index = index
        session = _Session(self.backend, config, P.CXRTREK_SYSTEM_PROMPT)
        reading = Reading(
            model=self.model,
            settings=config.to_dict(),
            program_version=PROGRAM_VERSION,
            images=[p.info for p in now + before],
            stages=session.stages,
            findings=[],
            indication=indication,
        )
        stage_runs = (
            lambda: self._stage1(session, reading, now),
            lambda: self._stage2(session, reading),
            lambda: self._stage3(session, reading),
            lambda: self._single(
                session, 4, "relations", P.RELATIONS_QUESTION, reading, "relations_text"
            ),
            lambda: self._stage5(session, reading, now, before, prior_report),
            lambda: self._single(session, 6, "trend", P.TREND_QUESTION, reading, "trend_text"),
            lambda: self._single(session, 7, "advice", P.ADVICE_QUESTION, reading, "advice_text"),
            lambda: self._stage8(session, reading),
        )
        for number, run in enumerate(stage_runs, start=1):
            stage_started = time.perf_counter()
            run()
            session.stages[number - 1].seconds = time.perf_counter() - stage_started
        for stage in session.stages:
            for turn in stage.turns:
                if not turn.parsed:
                    reading.unparsed.append(
                        f"stage {stage.stage} {turn.kind}"
                        f"{' (' + turn.target + ')' if turn.target else ''}: {turn.parse_note}"
                    )
                if turn.boxed_missing:
                    reading.unparsed.append(
                        f"stage {stage.stage} {turn.kind}: no \\boxed{{}} answer"
                    )
        reading.total_seconds = time.perf_counter() - started
        return reading

    # ------------------------------------------------------------------ stages
    def _stage1(self, session: _Session, reading: Reading, now: list[_Prepared]) -> None:
        stage = session.begin(1)
        images = [(p.info.index, p.image) for p in now]
        view = session.ask(stage, "view", P.VIEW_PROMPT, images=images)
        choice = parse_choice(view.answer, P.VIEW_OPTIONS)
        reading.view = choice.text
        if choice.index is None:
            view.parsed, view.parse_note = False, "no view option recognised"
        quality = session.ask(
            stage, "quality", P.multiple_choice(P.QUALITY_QUESTION, P.QUALITY_OPTIONS)
        )
        picked = parse_choice(quality.answer, P.QUALITY_OPTIONS)
        if picked.index is None:
            quality.parsed, quality.parse_note = False, "no quality option recognised"
            reading.quality_warnings.append("image quality could not be assessed")
        else:
            reading.quality = P.QUALITY_OPTIONS[picked.index]
            if picked.index == 1:
                reading.quality_warnings.append("limited image quality")
            elif picked.index == 2:
                reading.quality_warnings.append("non-diagnostic image quality")

    def _stage2(self, session: _Session, reading: Reading) -> None:
        stage = session.begin(2)
        questions = [
            (
                P.multiple_choice(
                    P.PRESENCE_QUESTION.format(finding=P.finding_phrase(label)), P.PRESENCE_OPTIONS
                ),
                label,
            )
            for label in self.config.findings_vocabulary
        ]
        sample = self.config.consistency_samples > 0
        turns = session.ask_all(stage, "presence", questions, sample=sample)
        for (_, label), turn in zip(questions, turns, strict=True):
            choice = parse_choice(turn.answer, P.PRESENCE_OPTIONS)
            finding = Finding(
                label=label,
                present=None if choice.index is None else choice.index == 0,
                presence_answer=turn.answer,
            )
            if choice.index is None:
                turn.parsed, turn.parse_note = False, "neither yes nor no"
            if sample and finding.present is not None:
                # Sampled from the same conversation the greedy answer came from: the
                # confidence is that of this answer, in its context. (An answer not understood
                # gets none: agreement on gibberish is not confidence in a finding.)
                answers = [
                    parse_choice(self._answer(stage.mode, t), P.PRESENCE_OPTIONS).index
                    for t in turn.samples
                ]
                finding.confidence = consistency(answers, len(P.PRESENCE_OPTIONS))
            reading.findings.append(finding)

    @staticmethod
    def _answer(mode: str, raw: str) -> str:
        return split_reasoning(raw).answer if mode == "reasoning" else raw

    def _stage3(self, session: _Session, reading: Reading) -> None:
        stage = session.begin(3)
        positives = reading.positive_findings
        if not positives:
            stage.skipped, stage.skip_reason = True, "no finding was answered present in stage 2"
            return
        first = reading.images[0]
        for finding in positives:
            phrase = P.finding_phrase(finding.label)
            attributes = session.ask(
                stage,
                "attributes",
                P.ATTRIBUTES_QUESTION.format(finding=phrase),
                target=finding.label,
            )
            finding.attributes = attributes.answer
            finding.laterality = parse_laterality(attributes.answer)
            finding.site = parse_site(attributes.answer)
            question = P.ABNORMALITY_GROUNDING_PROMPT.format(finding=phrase)
            if self.config.grounding_hint:
                question += P.GROUNDING_FORMAT_HINT
            grounding = session.ask(stage, "grounding", question, target=finding.label)
            parsed = parse_boxes(grounding.answer, finding.label)
            if not parsed.understood and grounding.answer != grounding.raw:
                parsed = parse_boxes(grounding.raw, finding.label)  # box written outside \boxed{}
            self._keep_boxes(parsed, finding, first, grounding)
            if finding.laterality is None and finding.boxes:
                finding.laterality = parse_laterality(" ".join(b.label for b in finding.boxes))

    @staticmethod
    def _keep_boxes(parsed: BoxParse, finding: Finding, image: ImageInfo, turn: Turn) -> None:
        """Map the model's percent boxes to the stored pixels of the first current image."""
        for box in parsed.boxes:
            x1, y1, x2, y2 = image.geometry.box_percent_to_stored((box.x1, box.y1, box.x2, box.y2))
            finding.boxes.append(
                Box(
                    label=box.label or finding.label,
                    x1=x1,
                    y1=y1,
                    x2=x2,
                    y2=y2,
                    image_index=image.index,
                    sop_instance_uid=image.sop_instance_uid,
                    stage=3,
                    model_percent=(box.x1, box.y1, box.x2, box.y2),
                    clipped=box.clipped,
                )
            )
        finding.grounding_negative = parsed.negative
        if not parsed.understood:
            turn.parsed, turn.parse_note = False, "no box and no negative answer"
        elif parsed.rejected:
            turn.parse_note = "rejected: " + "; ".join(parsed.rejected)

    def _single(
        self,
        session: _Session,
        number: int,
        kind: str,
        question: str,
        reading: Reading,
        attribute: str,
    ) -> None:
        stage = session.begin(number)
        turn = session.ask(stage, kind, question)
        setattr(reading, attribute, turn.answer)

    def _stage5(
        self,
        session: _Session,
        reading: Reading,
        now: list[_Prepared],
        before: list[_Prepared],
        prior_report: str | None,
    ) -> None:
        stage = session.begin(5)
        if not before:
            stage.skipped, stage.skip_reason = True, "no prior study"
            return
        pair = [(before[0].info.index, before[0].image), (now[0].info.index, now[0].image)]
        progression = session.ask(stage, "progression", P.PROGRESSION_PROMPT, images=pair)
        reading.progression_text = progression.answer
        for finding in reading.positive_findings:
            turn = session.ask(
                stage,
                "temporal",
                P.TEMPORAL_PROMPT.format(finding=P.finding_phrase(finding.label)),
                target=finding.label,
            )
            choice = parse_choice(turn.answer, P.TEMPORAL_OPTIONS)
            finding.progression = choice.text
            if choice.index is None:
                turn.parsed, turn.parse_note = False, "no progression option recognised"
        prefix = P.PRIOR_REPORT_PREFIX.format(report=prior_report) if prior_report else ""
        session.ask(stage, "differences", prefix + P.DIFFERENCES_QUESTION)

    def _stage8(self, session: _Session, reading: Reading) -> None:
        stage = session.begin(8)
        if reading.indication:
            prompt = P.FINDINGS_WITH_INDICATION_PROMPT.format(indication=reading.indication)
        else:
            prompt = P.FINDINGS_PROMPT
        reading.findings_text = session.ask(stage, "findings", prompt).answer
        reading.impression = session.ask(stage, "impression", P.IMPRESSION_PROMPT).answer

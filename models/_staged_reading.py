"""The eight-stage CXRTrek reading, driven by CheXOne's prompts, as one growing conversation.

Each question is a user turn; the model's (cleaned) output is kept as the assistant turn, so later
stages read the model's earlier answers. The current image(s) enter with the first question; the
prior study's first image enters at stage 5 together with the current image again, prior first
(CheXOne's progression layout: "the second image" is the current one).

The texts that go into the report are asked again in CheXOne's trained form
(:func:`_report_pass`): a fresh single-turn conversation each, under the stock system prompt,
images first and then the task prompt. Those conversations share their image prefix, so a
backend with prefix reuse encodes the images once and batches the prompts as branches. The
staged reading stays the reading trace, its own stage-8 report kept beside the single-turn one;
``ReaderConfig.report_source`` says which of the two feeds the report.

The draft comes first: with ``report_source=single_turn`` the draft needs stages 1-3 (view,
quality, presence, attributes) and the single-turn report prompts, so those run first, the
``on_draft`` hook gets the reading, and stages 4-8 (the rest of the trace) follow.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Container, Sequence
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


def _turn_from(
    generation: Generation,
    *,
    kind: str,
    prompt: str,
    mode: Literal["instruction", "reasoning"],
    target: str | None,
    images: list[int],
    conversation: Literal["cxrtrek", "single-turn"] = "cxrtrek",
) -> Turn:
    """A trace entry for one answer; an answer cut by the token limit is marked truncated."""
    raw = generation.text
    finish = generation.finish_reasons[0] if generation.finish_reasons else ""
    turn = Turn(
        kind=kind,
        question=prompt,
        answer=raw,
        raw=raw,
        mode=mode,
        target=target,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=sum(generation.completion_tokens),
        cached_tokens=generation.cached_tokens,
        seconds=generation.total_seconds,
        finish_reason=finish,
        truncated=finish == "length",
        conversation=conversation,
        images=images,
    )
    if mode == "reasoning":
        split = split_reasoning(raw)
        turn.answer, turn.reasoning = split.answer, split.reasoning
        turn.boxed_missing = not split.boxed
        # A box opened and never closed was cut short, whatever the server said.
        turn.truncated = turn.truncated or not split.complete
    return turn


def _limit(config: ReaderConfig, mode: str) -> int:
    """The answer limit of a mode (reasoning traces need room before the box closes)."""
    return config.max_new_tokens_reasoning if mode == "reasoning" else config.max_new_tokens


def _context_text(turn: Turn) -> str:
    """What stays in the conversation as the model's answer: in reasoning mode the boxed
    answer without its trace (traces of up to 2048 tokens over some 25 turns would overrun
    CheXOne's 32k context); the whole output when no box was found."""
    if turn.mode == "reasoning" and not turn.boxed_missing:
        return turn.answer
    return turn.raw


class _Dialogue:
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

    def _options(self, stage: StageResult) -> DecodeOptions:
        return DecodeOptions(max_new_tokens=_limit(self.config, stage.mode), seed=self.config.seed)

    def _turn(
        self,
        stage: StageResult,
        kind: str,
        question: str,
        generation: Generation,
        target: str | None,
        images: list[int],
    ) -> Turn:
        turn = _turn_from(
            generation, kind=kind, prompt=question, mode=stage.mode, target=target, images=images
        )
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
        generation = self.backend.generate(asked, self._options(stage))
        turn = self._turn(stage, kind, prompt, generation, target, [i for i, _ in images])
        self.conversation = asked.then(Message("assistant", _context_text(turn)))
        if sample:
            turn.samples = self._sample(asked, stage)
        return turn

    def ask_all(
        self,
        stage: StageResult,
        kind: str,
        questions: Sequence[tuple[str, str | None]],
        *,
        sampled: Container[str | None] = (),
    ) -> list[Turn]:
        """Text-only questions of one stage: in turn, or as branches of the shared prefix when
        the stage is in ``branch_stages`` (each then sees the conversation up to the stage, not
        its siblings; all questions and answers join the conversation afterwards, in order).
        Questions whose target is in ``sampled`` also get self-consistency samples."""
        if stage.stage not in self.config.branch_stages or len(questions) < 2:
            return [self.ask(stage, kind, q, target=t, sample=t in sampled) for q, t in questions]
        prompts = [self._prompt(stage, q) for q, _ in questions]
        branches = [self.conversation.then(Message("user", p)) for p in prompts]
        generations = self.backend.generate_batch(branches, self._options(stage))
        turns = []
        for prompt, (_, target), generation, branch in zip(
            prompts, questions, generations, branches, strict=True
        ):
            turn = self._turn(stage, kind, prompt, generation, target, [])
            self.conversation = self.conversation.then(
                Message("user", prompt), Message("assistant", _context_text(turn))
            )
            if target in sampled:
                turn.samples = self._sample(branch, stage)
            turns.append(turn)
        return turns

    def _sample(self, asked: Conversation, stage: StageResult) -> list[str]:
        """``consistency_samples`` answers sampled at ``consistency_temperature``."""
        options = DecodeOptions(
            max_new_tokens=_limit(self.config, stage.mode),
            do_sample=True,
            temperature=self.config.consistency_temperature,
            n=self.config.consistency_samples,
            seed=self.config.seed,
        )
        return self.backend.generate(asked, options).texts


_BACKEND_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class Reader:
    """Runs the staged reading of a study (see :func:`models.load_reader`).

    Several threads may call :meth:`read` at once. A backend that says
    ``concurrent_readings`` serves them all at the same time: the OpenAI-compatible one (each
    request carries its whole conversation, the server batches them) and the transformers one
    (its engine batches the turns of all readings in flight). Any other backend (a test double)
    reads one study at a time under a lock per backend.
    """

    def __init__(self, backend: Backend, config: ReaderConfig, model: ModelInfo) -> None:
        self.backend = backend
        self.config = config
        self.model = model
        self._lock: contextlib.AbstractContextManager[object]
        if getattr(backend, "concurrent_readings", False):
            self._lock = contextlib.nullcontext()
        else:
            # load_reader hands out a new Reader around the same cached backend each call: the
            # lock belongs to the backend, not to the Reader.
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
        on_draft: Callable[[Reading], None] | None = None,
    ) -> Reading:
        """The eight-stage reading of ``current`` (with ``prior`` for stage 5, when given).

        ``prior_report``, the prior study's signed report text, goes into stage 5's comparison
        question when there is a prior image to compare with. ``on_draft`` is called (in this
        thread) with the reading as soon as everything the report needs is in it, before the
        rest of the trace is read; ``Reading.draft_seconds`` records when that was.
        """
        if not current:
            raise ValueError("a reading needs at least one current image")
        with self._lock:
            return self._read(
                list(current),
                list(prior or []),
                (indication or "").strip() or None,
                (prior_report or "").strip() or None,
                on_draft,
            )

    def _read(
        self,
        current: list[StudyImage],
        prior: list[StudyImage],
        indication: str | None,
        prior_report: str | None,
        on_draft: Callable[[Reading], None] | None,
    ) -> Reading:
        started = time.perf_counter()
        config = self.config
        now = _frontal_first([_prepare(img, i, "current", config) for i, img in enumerate(current)])
        before = [_prepare(img, len(now) + i, "prior", config) for i, img in enumerate(prior)]
        for index, item in enumerate(now):
            item.info.index = index
        try:
            return self._read_prepared(now, before, indication, prior_report, on_draft, started)
        finally:
            # The backend may let go of what it kept of this reading's conversations.
            release = getattr(self.backend, "release", None)
            if release is not None:
                release([p.image for p in now + before])

    def _read_prepared(
        self,
        now: list[_Prepared],
        before: list[_Prepared],
        indication: str | None,
        prior_report: str | None,
        on_draft: Callable[[Reading], None] | None,
        started: float,
    ) -> Reading:
        config = self.config
        dialogue = _Dialogue(self.backend, config, P.CXRTREK_SYSTEM_PROMPT)
        reading = Reading(
            model=self.model,
            settings=config.to_dict(),
            program_version=PROGRAM_VERSION,
            images=[p.info for p in now + before],
            stages=dialogue.stages,
            findings=[],
            indication=indication,
            report_source=config.report_source,
        )
        stage_runs = (
            lambda: self._stage1(dialogue, reading, now),
            lambda: self._stage2(dialogue, reading),
            lambda: self._stage3(dialogue, reading),
            lambda: self._single(
                dialogue, 4, "relations", P.RELATIONS_QUESTION, reading, "relations_text"
            ),
            lambda: self._stage5(dialogue, reading, now, before, prior_report),
            lambda: self._single(dialogue, 6, "trend", P.TREND_QUESTION, reading, "trend_text"),
            lambda: self._single(dialogue, 7, "advice", P.ADVICE_QUESTION, reading, "advice_text"),
            lambda: self._stage8(dialogue, reading),
        )
        single = config.report_source == "single_turn"
        # The stages the single-turn report needs (view, quality, presence, attributes) first.
        draft_stages = 3 if single else len(stage_runs)
        for number, run in enumerate(stage_runs[:draft_stages], start=1):
            self._timed(dialogue, number, run)
        if single:
            _report_pass(self.backend, config, reading, now, before)
        else:
            _report_from_stages(reading)
        _record_problems(reading)
        reading.draft_seconds = time.perf_counter() - started
        if on_draft is not None:
            on_draft(reading)
        for number, run in enumerate(stage_runs[draft_stages:], start=draft_stages + 1):
            self._timed(dialogue, number, run)
        _record_problems(reading)
        reading.total_seconds = time.perf_counter() - started
        return reading

    @staticmethod
    def _timed(dialogue: _Dialogue, number: int, run: Callable[[], None]) -> None:
        stage_started = time.perf_counter()
        run()
        dialogue.stages[number - 1].seconds = time.perf_counter() - stage_started

    # ------------------------------------------------------------------ stages
    def _stage1(self, dialogue: _Dialogue, reading: Reading, now: list[_Prepared]) -> None:
        stage = dialogue.begin(1)
        images = [(p.info.index, p.image) for p in now]
        view = dialogue.ask(stage, "view", P.VIEW_PROMPT, images=images)
        choice = parse_choice(view.answer, P.VIEW_OPTIONS)
        reading.view = choice.text
        if choice.index is None:
            view.parsed, view.parse_note = False, "no view option recognised"
        quality = dialogue.ask(
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

    def _stage2(self, dialogue: _Dialogue, reading: Reading) -> None:
        stage = dialogue.begin(2)
        questions = [
            (
                P.multiple_choice(
                    P.PRESENCE_QUESTION.format(finding=P.finding_phrase(label)), P.PRESENCE_OPTIONS
                ),
                label,
            )
            for label in self.config.findings_vocabulary
        ]
        sampled = _sampled_labels(self.config)
        turns = dialogue.ask_all(stage, "presence", questions, sampled=sampled)
        for (_, label), turn in zip(questions, turns, strict=True):
            choice = parse_choice(turn.answer, P.PRESENCE_OPTIONS)
            finding = Finding(
                label=label,
                present=None if choice.index is None else choice.index == 0,
                presence_answer=turn.answer,
            )
            if choice.index is None:
                turn.parsed, turn.parse_note = False, "neither yes nor no"
            if label in sampled and finding.present is not None:
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

    def _stage3(self, dialogue: _Dialogue, reading: Reading) -> None:
        stage = dialogue.begin(3)
        positives = reading.positive_findings
        if not positives:
            stage.skipped, stage.skip_reason = True, "no finding was answered present in stage 2"
            return
        first = reading.images[0]
        for finding in positives:
            phrase = P.finding_phrase(finding.label)
            attributes = dialogue.ask(
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
            grounding = dialogue.ask(stage, "grounding", question, target=finding.label)
            parsed = parse_boxes(grounding.answer, finding.label)
            if not parsed.understood and grounding.answer != grounding.raw:
                parsed = parse_boxes(grounding.raw, finding.label)  # box written outside \boxed{}
            finding.staged_boxes = _keep_boxes(parsed, finding, first, grounding, stage=3)
            finding.grounding_negative = parsed.negative
            if finding.laterality is None and finding.staged_boxes:
                finding.laterality = parse_laterality(
                    " ".join(b.label for b in finding.staged_boxes)
                )

    def _single(
        self,
        dialogue: _Dialogue,
        number: int,
        kind: str,
        question: str,
        reading: Reading,
        attribute: str,
    ) -> None:
        stage = dialogue.begin(number)
        turn = dialogue.ask(stage, kind, question)
        setattr(reading, attribute, turn.answer)

    def _stage5(
        self,
        dialogue: _Dialogue,
        reading: Reading,
        now: list[_Prepared],
        before: list[_Prepared],
        prior_report: str | None,
    ) -> None:
        stage = dialogue.begin(5)
        if not before:
            stage.skipped, stage.skip_reason = True, "no prior study"
            return
        pair = [(before[0].info.index, before[0].image), (now[0].info.index, now[0].image)]
        progression = dialogue.ask(stage, "progression", P.PROGRESSION_PROMPT, images=pair)
        reading.staged_report["progression_text"] = progression.answer
        for finding in reading.positive_findings:
            turn = dialogue.ask(
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
        dialogue.ask(stage, "differences", prefix + P.DIFFERENCES_QUESTION)

    def _stage8(self, dialogue: _Dialogue, reading: Reading) -> None:
        stage = dialogue.begin(8)
        if reading.indication:
            prompt = P.FINDINGS_WITH_INDICATION_PROMPT.format(indication=reading.indication)
        else:
            prompt = P.FINDINGS_PROMPT
        reading.staged_report["findings_text"] = dialogue.ask(stage, "findings", prompt).answer
        reading.staged_report["impression"] = dialogue.ask(
            stage, "impression", P.IMPRESSION_PROMPT
        ).answer


def _sampled_labels(config: ReaderConfig) -> frozenset[str | None]:
    """The vocabulary labels whose presence answer gets self-consistency samples."""
    if config.consistency_samples <= 0:
        return frozenset()
    wanted = {label.lower() for label in config.consistency_labels}
    return frozenset(
        label for label in config.findings_vocabulary if not wanted or label.lower() in wanted
    )


def _keep_boxes(
    parsed: BoxParse, finding: Finding, image: ImageInfo, turn: Turn, *, stage: int
) -> list[Box]:
    """The model's percent boxes mapped to the stored pixels of ``image`` (the first current
    one); what was not understood is noted on the turn."""
    boxes = []
    for box in parsed.boxes:
        x1, y1, x2, y2 = image.geometry.box_percent_to_stored((box.x1, box.y1, box.x2, box.y2))
        boxes.append(
            Box(
                label=box.label or finding.label,
                x1=x1,
                y1=y1,
                x2=x2,
                y2=y2,
                image_index=image.index,
                sop_instance_uid=image.sop_instance_uid,
                stage=stage,
                model_percent=(box.x1, box.y1, box.x2, box.y2),
                clipped=box.clipped,
            )
        )
    if not parsed.understood:
        turn.parsed, turn.parse_note = False, "no box and no negative answer"
    elif parsed.rejected:
        turn.parse_note = "rejected: " + "; ".join(parsed.rejected)
    return boxes


def _grounding_parse(turn: Turn, label: str) -> BoxParse:
    parsed = parse_boxes(turn.answer, label)
    if not parsed.understood and turn.answer != turn.raw:
        parsed = parse_boxes(turn.raw, label)  # box written outside \boxed{}
    return parsed


def _report_from_stages(reading: Reading) -> None:
    """``report_source=staged``: stage 8's texts, stage 5's progression and stage 3's boxes."""
    for name in ("findings_text", "impression", "progression_text"):
        setattr(reading, name, reading.staged_report.get(name, ""))
    for stage in reading.stages:
        for turn in stage.turns:
            field = {"findings": "findings_text", "impression": "impression"}.get(turn.kind)
            if stage.stage == 5 and turn.kind == "progression":
                field = "progression_text"
            if field and stage.stage in (5, 8):
                reading.text_sources[field] = f"CXRTrek stage {stage.stage}: {turn.question}"
    for finding in reading.findings:
        finding.boxes = list(finding.staged_boxes)
        if finding.present:
            finding.grounding_source = "CXRTrek stage 3"


@dataclass(frozen=True)
class _Ask:
    """One single-turn report prompt: what it asks, about which images, in which mode."""

    kind: str
    field: str  # the Reading attribute its answer fills ("" for grounding)
    prompt: str
    stage: int  # the staged-reading stage that asks the same task (its mode applies)
    images: tuple[_Prepared, ...]
    target: Finding | None = None


def _report_asks(
    config: ReaderConfig, reading: Reading, now: list[_Prepared], before: list[_Prepared]
) -> list[_Ask]:
    """The report prompts, as CheXOne's task templates word them."""
    findings_prompt = (
        P.FINDINGS_WITH_INDICATION_PROMPT.format(indication=reading.indication)
        if reading.indication
        else P.FINDINGS_PROMPT
    )
    current = tuple(now)
    asks = [
        _Ask("findings", "findings_text", findings_prompt, 8, current),
        _Ask("impression", "impression", P.IMPRESSION_PROMPT, 8, current),
    ]
    hint = P.GROUNDING_FORMAT_HINT if config.grounding_hint else ""
    for finding in reading.positive_findings:
        prompt = P.ABNORMALITY_GROUNDING_PROMPT.format(finding=P.finding_phrase(finding.label))
        # The boxes are read on one image: ask about the frontal view alone, as trained.
        asks.append(_Ask("grounding", "", prompt + hint, 3, (now[0],), finding))
    if before:
        # Exactly two images, prior first: "the second image" is the current one.
        asks.append(
            _Ask("progression", "progression_text", P.PROGRESSION_PROMPT, 5, (before[0], now[0]))
        )
    return asks


def _report_pass(
    backend: Backend,
    config: ReaderConfig,
    reading: Reading,
    now: list[_Prepared],
    before: list[_Prepared],
) -> None:
    """Ask the report texts in CheXOne's trained form and let them feed the report.

    Each prompt is a fresh conversation: the stock system prompt, one user turn with the images
    first and then the task prompt. Prompts over the same images in the same mode go to the
    backend together as branches of their shared image prefix.
    """
    asks = _report_asks(config, reading, now, before)
    groups: dict[tuple[str, tuple[int, ...]], list[_Ask]] = {}
    for ask in asks:
        mode = "reasoning" if ask.stage in config.reasoning_stages else "instruction"
        groups.setdefault((mode, tuple(p.info.index for p in ask.images)), []).append(ask)
    answered: dict[int, Turn] = {}
    for (mode, indices), members in groups.items():
        suffix = REASONING_SUFFIX if mode == "reasoning" else ""
        conversations = [
            Conversation(
                P.QWEN_SYSTEM_PROMPT,
                (Message("user", a.prompt + suffix, tuple(p.image for p in a.images)),),
            )
            for a in members
        ]
        options = DecodeOptions(max_new_tokens=_limit(config, mode), seed=config.seed)
        generations = backend.generate_batch(conversations, options)
        for ask, generation in zip(members, generations, strict=True):
            answered[id(ask)] = _turn_from(
                generation,
                kind=ask.kind,
                prompt=ask.prompt + suffix,
                mode="reasoning" if mode == "reasoning" else "instruction",
                target=ask.target.label if ask.target else None,
                images=list(indices),
                conversation="single-turn",
            )
    for ask in asks:  # in the order asked, whatever the batching
        turn = answered[id(ask)]
        reading.report_turns.append(turn)
        if ask.target is None:
            setattr(reading, ask.field, turn.answer)
            reading.text_sources[ask.field] = f"single-turn {ask.kind}: {turn.question}"
            continue
        parsed = _grounding_parse(turn, ask.target.label)
        ask.target.boxes = _keep_boxes(parsed, ask.target, reading.images[0], turn, stage=0)
        ask.target.grounding_negative = parsed.negative
        ask.target.grounding_source = "single-turn"
        if ask.target.laterality is None and ask.target.boxes:
            ask.target.laterality = parse_laterality(" ".join(b.label for b in ask.target.boxes))


def _record_problems(reading: Reading) -> None:
    """One line per answer not understood, without its \\boxed{} answer, or cut short (the
    lists are rebuilt, so the draft and the complete reading each get their own)."""
    reading.unparsed.clear()
    reading.truncated.clear()
    traced = [(f"stage {s.stage}", t) for s in reading.stages for t in s.turns]
    traced += [("single-turn", t) for t in reading.report_turns]
    for where, turn in traced:
        about = f" ({turn.target})" if turn.target else ""
        if not turn.parsed:
            reading.unparsed.append(f"{where} {turn.kind}{about}: {turn.parse_note}")
        if turn.boxed_missing:
            reading.unparsed.append(f"{where} {turn.kind}: no \\boxed{{}} answer")
        if turn.truncated:
            reading.truncated.append(
                f"{where} {turn.kind}{about}: cut at {turn.completion_tokens} tokens, incomplete"
            )

"""The staged reading's logic, driven by a scripted backend (a test double of the model)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest
from PIL import Image

from models import (
    Conversation,
    DecodeOptions,
    Generation,
    ModelInfo,
    Reader,
    ReaderConfig,
    Reading,
    StudyImage,
)
from models._prompts import QWEN_SYSTEM_PROMPT
from models._staged_reading import consistency
from tests.models.conftest import radiograph

Script = Callable[[str], str]


class ScriptedBackend:
    """Answers each question with ``script(question)``; records every conversation it saw."""

    model_id = "scripted"
    revision = "test"

    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[Conversation] = []
        self.options: list[DecodeOptions] = []
        self.batches: list[int] = []

    def generate(self, conversation: Conversation, options: DecodeOptions) -> Generation:
        self.seen.append(conversation)
        self.options.append(options)
        text = self.script(conversation.turns[-1].text)
        n = options.n if options.do_sample else 1
        texts = [text if i % 4 else "(B) No" for i in range(n)] if n > 1 else [text]
        return Generation(texts, prompt_tokens=10, completion_tokens=[3] * n, total_seconds=0.01)

    def generate_batch(
        self, conversations: list[Conversation], options: DecodeOptions
    ) -> list[Generation]:
        self.batches.append(len(conversations))
        return [self.generate(c, options) for c in conversations]


def script(question: str) -> str:
    q = question.lower()
    if "view of this chest" in q:
        return "(b) AP"
    if "image quality" in q:
        return "B"
    if "is there cardiomegaly" in q or "is there pleural effusion" in q:
        return "(A) Yes"
    if "is there" in q:
        return "No"
    if "describe the location" in q and "pleural effusion" in q:
        return "Small left pleural effusion at the costophrenic angle."
    if "describe the location" in q:
        return "Enlarged heart."
    if "locate areas" in q and "pleural effusion" in q:
        return "<|ref|>left pleural effusion<|/ref|><|box|>(60,70),(90,95)<|/box|>"
    if "locate areas" in q:
        return "No cardiomegaly detected."
    if "progression of" in q:
        return "(c) improving"
    if "trajectory" in q:
        return "Effusion has decreased."
    if "findings section" in q:
        return "Small left effusion. Cardiomegaly."
    if "impression" in q:
        return "Small left effusion."
    return f"answer to {question[:20]}"


def reasoning_script(question: str) -> str:
    answer = script(question.replace(" Please reason step by step", "\n"))
    return f"**Thinking Process:** 1. look.\n**Final Answer:** $$\\boxed{{{answer}}}$$"


VOCAB = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax")


def staged_calls(backend: ScriptedBackend) -> list[Conversation]:
    """The CXRTrek conversation's calls (the single-turn report prompts left out)."""
    return [c for c in backend.seen if c.system.startswith("You are a helpful radiology")]


def single_turn_calls(backend: ScriptedBackend) -> list[Conversation]:
    return [c for c in backend.seen if c.system == "You are a helpful assistant."]


def reader(backend: ScriptedBackend, **config: object) -> Reader:
    cfg = ReaderConfig(findings_vocabulary=VOCAB, max_new_tokens=16, **config)  # type: ignore[arg-type]
    return Reader(
        backend, cfg, ModelInfo("scripted", "test", demo=True, backend="test", source="-")
    )


@pytest.fixture(scope="module")
def current() -> StudyImage:
    return StudyImage.from_dataset(radiograph(200, 300, (10, 10, 50, 50)))


@pytest.fixture(scope="module")
def prior() -> StudyImage:
    return StudyImage.from_dataset(radiograph(220, 280, (10, 10, 50, 50)))


def test_full_reading_with_prior(current: StudyImage, prior: StudyImage) -> None:
    backend = ScriptedBackend(script)
    reading = reader(backend).read([current], [prior], indication="shortness of breath")

    assert [s.stage for s in reading.stages] == list(range(1, 9))
    assert not any(s.skipped for s in reading.stages)
    assert reading.view == "AP"
    assert reading.quality_warnings == ["limited image quality"]
    present = {f.label: f.present for f in reading.findings}
    assert present == {"Cardiomegaly": True, "Pleural Effusion": True, "Pneumothorax": False}

    effusion = next(f for f in reading.findings if f.label == "Pleural Effusion")
    assert effusion.laterality == "left" and effusion.site == "costophrenic angle"
    assert effusion.progression == "improving"
    (box,) = effusion.boxes
    # 60-90 % of 300 columns, 70-95 % of 200 rows, on the current image's stored grid.
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((180, 140, 270, 190))
    assert box.sop_instance_uid == current.sop_instance_uid
    # The report's box comes from the single-turn grounding prompt; stage 3's is kept beside it.
    assert box.stage == 0 and box.label == "left pleural effusion"
    assert effusion.grounding_source == "single-turn"
    (staged_box,) = effusion.staged_boxes
    assert staged_box.stage == 3 and (staged_box.x1, staged_box.y2) == pytest.approx((180, 190))
    heart = next(f for f in reading.findings if f.label == "Cardiomegaly")
    assert heart.boxes == [] and heart.staged_boxes == [] and heart.grounding_negative

    assert reading.progression_text == "Effusion has decreased."
    assert reading.findings_text == "Small left effusion. Cardiomegaly."
    assert reading.impression == "Small left effusion."
    assert reading.unparsed == []

    # One growing conversation: each call extends the previous one by exactly its new turns.
    staged = staged_calls(backend)
    for before, after in itertools.pairwise(staged):
        assert after.turns[: len(before.turns)] == before.turns
        assert after.turns[len(before.turns)].role == "assistant"
    assert backend.seen[0].system.startswith("You are a helpful radiology assistant")
    # Current image in the first turn; at stage 5 the prior first, the current second.
    first_turn = backend.seen[0].turns[0]
    assert len(first_turn.images) == 1
    progression = next(c for c in backend.seen if "trajectory" in c.turns[-1].text)
    prior_image, current_image = progression.turns[-1].images
    assert current_image is first_turn.images[0]
    assert prior_image.size != current_image.size  # the prior (280 wide) prepared separately
    # The grounding questions carry the format hint; greedy decoding throughout.
    grounding = [c.turns[-1].text for c in backend.seen if "Locate areas" in c.turns[-1].text]
    assert len(grounding) == 4 and all("Output format:\n<|ref|>" in q for q in grounding)
    assert all(not o.do_sample for o in backend.options)
    findings_q = next(
        c.turns[-1].text for c in backend.seen if "findings section" in c.turns[-1].text
    )
    assert findings_q == (
        'Given the indication: "shortness of breath", '
        "write a structured findings section for the CXR."
    )

    data = json.loads(reading.to_json())
    assert data["demo"] is True and data["model"]["label"].startswith("demo model")
    assert data["findings"][1]["boxes"][0]["sop_instance_uid"] == current.sop_instance_uid
    assert data["stages"][4]["turns"][0]["images"] == [1, 0]  # prior index 1, current index 0
    assert data["program_version"] and data["settings"]["findings_vocabulary"] == list(VOCAB)


def test_without_prior_stage5_is_skipped(current: StudyImage) -> None:
    backend = ScriptedBackend(script)
    reading = reader(backend).read([current])
    stage5 = reading.stages[4]
    assert stage5.skipped and stage5.skip_reason == "no prior study" and stage5.turns == []
    assert reading.progression_text == ""
    assert all(len(c.images) == 1 for c in backend.seen)
    assert staged_calls(backend)[-2].turns[-1].text == (
        "Write an example findings section for the CXR."
    )
    assert not any("trajectory" in c.turns[-1].text for c in backend.seen)


def test_reasoning_mode_splits_trace(current: StudyImage) -> None:
    backend = ScriptedBackend(reasoning_script)
    reading = reader(backend, reasoning_stages=frozenset({1, 2, 8})).read([current])
    view = reading.stages[0].turns[0]
    assert view.mode == "reasoning"
    assert view.question.endswith(
        " Please reason step by step, and put your final answer within \\boxed{{}}."
    )
    assert view.answer == "(b) AP" and view.reasoning.startswith("**Thinking Process:**")
    assert reading.view == "AP"
    assert [f.present for f in reading.findings] == [True, True, False]
    assert reading.stages[3].mode == "instruction"
    assert (
        reading.stages[3].turns[0].question
        == "How do the findings on this chest X-ray relate to each other?"
    )
    assert reading.impression == "Small left effusion."
    assert reading.unparsed == []


def test_unparseable_answers_are_recorded_not_raised(current: StudyImage) -> None:
    backend = ScriptedBackend(lambda q: "ionsb Output|inatedle \\boxed{")
    reading = reader(backend, reasoning_stages=frozenset({2})).read([current])
    assert reading.view is None
    assert all(f.present is None for f in reading.findings)
    assert reading.stages[2].skipped  # no positive finding, nothing to locate
    assert any("stage 1 view" in line for line in reading.unparsed)
    assert any("presence (Pneumothorax)" in line for line in reading.unparsed)
    assert "image quality could not be assessed" in reading.quality_warnings


def test_self_consistency_confidence(current: StudyImage) -> None:
    backend = ScriptedBackend(script)
    reading = reader(backend, consistency_samples=8).read([current])
    sampled = [o for o in backend.options if o.do_sample]
    assert len(sampled) == len(VOCAB) and all(o.n == 8 and o.temperature > 0 for o in sampled)
    by_label = {f.label: f for f in reading.findings}
    # Pneumothorax: all samples "No" -> full agreement; the others: 2 of 8 disagree.
    assert by_label["Pneumothorax"].confidence == pytest.approx(1.0)
    assert by_label["Cardiomegaly"].confidence == pytest.approx(consistency([0] * 6 + [1] * 2, 2))
    assert 0.0 < by_label["Cardiomegaly"].confidence < 1.0


def test_consistency_values() -> None:
    assert consistency([0, 0, 0], 2) == 1.0
    assert consistency([0, 1, None], 2) == pytest.approx(0.0)
    assert consistency([], 2) == 0.0


def test_branch_stage_batches_siblings(current: StudyImage) -> None:
    backend = ScriptedBackend(script)
    reading = reader(backend, branch_stages=frozenset({2})).read([current])
    assert backend.batches[0] == len(VOCAB)  # then the single-turn report prompts' batches
    presence = [c for c in backend.seen if "Is there" in c.turns[-1].text]
    assert len({len(c.turns) for c in presence}) == 1  # siblings do not see each other
    later = next(c for c in backend.seen if "relate to each other" in c.turns[-1].text)
    assert sum("Is there" in t.text for t in later.turns) == len(VOCAB)  # all joined afterwards
    assert [f.present for f in reading.findings] == [True, True, False]


def test_frontal_view_is_read_first() -> None:
    lateral = radiograph(100, 100, (1, 1, 5, 5))
    lateral.ViewPosition = "LL"
    frontal = radiograph(120, 100, (1, 1, 5, 5))
    backend = ScriptedBackend(script)
    reading = reader(backend).read(
        [StudyImage.from_dataset(lateral), StudyImage.from_dataset(frontal)]
    )
    assert reading.images[0].sop_instance_uid == frontal.SOPInstanceUID
    assert len(backend.seen[0].turns[0].images) == 2


def test_picture_input_and_empty_input() -> None:
    picture = Image.new("L", (90, 120), 30)
    reading = reader(ScriptedBackend(script)).read([StudyImage(picture=picture)])
    assert reading.images[0].source == "picture" and reading.images[0].sop_instance_uid is None
    with pytest.raises(ValueError):
        reader(ScriptedBackend(script)).read([])


def test_reasoning_traces_stay_out_of_the_context(current: StudyImage) -> None:
    backend = ScriptedBackend(reasoning_script)
    reader(backend, reasoning_stages=frozenset({1})).read([current])
    last = staged_calls(backend)[-1]
    answers = [t.text for t in last.turns if t.role == "assistant"]
    assert answers[0] == "(b) AP"  # stage 1, reasoning: the boxed answer only
    assert answers[2].startswith("**Thinking Process:**")  # stage 2, instruction: all of it


def test_prior_signed_report_goes_into_the_comparison(
    current: StudyImage, prior: StudyImage
) -> None:
    backend = ScriptedBackend(script)
    reader(backend).read([current], [prior], prior_report="Small left effusion.")
    asked = [c.turns[-1].text for c in backend.seen if "key differences" in c.turns[-1].text]
    assert asked and asked[0].startswith('The earlier chest X-ray was reported as: "Small left')
    # Without a prior image there is nothing to compare, so the report is not asked about.
    backend = ScriptedBackend(script)
    reader(backend).read([current], None, prior_report="Small left effusion.")
    assert not any("reported as" in c.turns[-1].text for c in backend.seen)


def test_report_texts_in_the_trained_single_turn_form(
    current: StudyImage, prior: StudyImage
) -> None:
    backend = ScriptedBackend(script)
    reading = reader(backend).read([current], [prior], indication="fever")
    asked = single_turn_calls(backend)
    # Findings, impression, one grounding per positive finding, progression.
    assert sorted(t.kind for t in reading.report_turns) == sorted(
        ["findings", "impression", "grounding", "grounding", "progression"]
    )
    assert len(asked) == len(reading.report_turns)
    first_image = staged_calls(backend)[0].turns[0].images[0]
    for conversation in asked:
        (turn,) = conversation.turns  # a fresh conversation: one user turn, nothing before
        assert turn.role == "user" and turn.images
    by_prompt = {c.turns[0].text.split(":")[0][:30]: c.turns[0] for c in asked}
    findings = next(c.turns[0] for c in asked if "findings section" in c.turns[0].text)
    assert (
        findings.text
        == 'Given the indication: "fever", write a structured findings section for the CXR.'
    )
    assert findings.images == (first_image,)
    progression = next(c.turns[0] for c in asked if "trajectory" in c.turns[0].text)
    assert len(progression.images) == 2 and progression.images[1] is first_image
    assert progression.images[0].size != first_image.size  # prior first, then current
    assert by_prompt and all(t.conversation == "single-turn" for t in reading.report_turns)
    # The texts say where they came from; stage 8's own report is kept beside them.
    assert reading.report_source == "single_turn"
    assert reading.text_sources["findings_text"].startswith("single-turn findings: Given the")
    assert reading.text_sources["progression_text"] == (
        "single-turn progression: Write the trajectory of findings by comparing the second "
        "image to the first one."
    )
    assert reading.staged_report == {
        "progression_text": "Effusion has decreased.",
        "findings_text": "Small left effusion. Cardiomegaly.",
        "impression": "Small left effusion.",
    }
    data = json.loads(reading.to_json())
    assert [t["kind"] for t in data["report_turns"]] == [t.kind for t in reading.report_turns]


class SystemAwareBackend(ScriptedBackend):
    """Answers the findings prompt by the conversation it is asked in: stage 8 and the
    single-turn prompt are the same words under different system prompts."""

    def generate(self, conversation: Conversation, options: DecodeOptions) -> Generation:
        out = super().generate(conversation, options)
        if conversation.turns[-1].text.startswith("Write an example findings"):
            single = conversation.system == QWEN_SYSTEM_PROMPT
            out.texts = ["single-turn findings" if single else "staged findings"]
        return out


def test_single_turn_answers_feed_the_report_not_stage_8(current: StudyImage) -> None:
    reading = reader(SystemAwareBackend(script)).read([current])
    assert reading.findings_text == "single-turn findings"
    assert reading.staged_report["findings_text"] == "staged findings"
    backend = SystemAwareBackend(script)
    staged = reader(backend, report_source="staged").read([current])
    assert staged.findings_text == "staged findings" and staged.report_turns == []
    assert single_turn_calls(backend) == []
    assert staged.text_sources["findings_text"] == (
        "CXRTrek stage 8: Write an example findings section for the CXR."
    )
    effusion = next(f for f in staged.findings if f.label == "Pleural Effusion")
    assert effusion.boxes == effusion.staged_boxes and effusion.boxes[0].stage == 3
    assert effusion.grounding_source == "CXRTrek stage 3"


class CutBackend(ScriptedBackend):
    """Says every findings answer was cut by the token limit."""

    def generate(self, conversation: Conversation, options: DecodeOptions) -> Generation:
        out = super().generate(conversation, options)
        if "findings section" in conversation.turns[-1].text:
            out.finish_reasons = ["length"]
        return out


def test_token_limits_per_mode_and_cut_answers_flagged(current: StudyImage) -> None:
    backend = CutBackend(script)
    cfg = ReaderConfig(
        findings_vocabulary=VOCAB,
        max_new_tokens=300,
        max_new_tokens_reasoning=2048,
        reasoning_stages=frozenset({8}),
    )
    info = ModelInfo("scripted", "test", demo=True, backend="test", source="-")
    reading = Reader(backend, cfg, info).read([current])
    limits = {
        (c.system[:20], c.turns[-1].text): o.max_new_tokens
        for c, o in zip(backend.seen, backend.options, strict=True)
    }
    assert {v for k, v in limits.items() if "findings section" in k[1] or "impression" in k[1]} == {
        2048
    }
    assert {v for k, v in limits.items() if "view of this" in k[1]} == {300}
    assert len(reading.truncated) == 2  # stage 8 and the single-turn findings prompt
    assert all("findings" in line and "incomplete" in line for line in reading.truncated)
    assert reading.stages[7].turns[0].truncated and not reading.stages[7].turns[1].truncated
    # An unclosed \boxed{ in reasoning mode is a cut answer too, whatever the server said.
    backend = ScriptedBackend(lambda q: "**Thinking** ... \\boxed{Small left eff")
    cut = reader(backend, reasoning_stages=frozenset({8})).read([current])
    assert any(line.startswith("stage 8 impression") for line in cut.truncated)


def test_consistency_only_for_the_chosen_labels(current: StudyImage) -> None:
    backend = ScriptedBackend(script)
    reading = reader(backend, consistency_samples=4, consistency_labels=("pleural effusion",)).read(
        [current]
    )
    sampled = [o for o in backend.options if o.do_sample]
    assert len(sampled) == 1 and sampled[0].n == 4
    by_label = {f.label: f.confidence for f in reading.findings}
    assert by_label["Cardiomegaly"] is None and by_label["Pneumothorax"] is None
    assert by_label["Pleural Effusion"] == pytest.approx(consistency([1, 0, 0, 0], 2))


def test_the_draft_comes_first_then_the_trace(current: StudyImage, prior: StudyImage) -> None:
    """The single-turn report prompts run right after stage 3; ``on_draft`` sees the report
    texts and boxes before any of stages 4-8 was asked, and both times are recorded."""
    backend = ScriptedBackend(script)
    drafts: list[tuple[int, str, list[int]]] = []

    def on_draft(reading: Reading) -> None:
        drafts.append((len(backend.seen), reading.findings_text, [s.stage for s in reading.stages]))

    reading = reader(backend).read([current], [prior], on_draft=on_draft)
    assert len(drafts) == 1
    asked, findings_text, stages = drafts[0]
    assert findings_text == "Small left effusion. Cardiomegaly."
    assert stages == [1, 2, 3]
    systems = [c.system for c in backend.seen]
    single = [i for i, s in enumerate(systems) if s == QWEN_SYSTEM_PROMPT]
    assert single and max(single) < asked  # every report prompt before the draft hook
    assert all(s != QWEN_SYSTEM_PROMPT for s in systems[asked:])  # then the trace only
    assert [s.stage for s in reading.stages] == list(range(1, 9))
    assert 0 < reading.draft_seconds <= reading.total_seconds

"""The staged reading's logic, driven by a scripted backend (a test double of the model)."""

from __future__ import annotations

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
    StudyImage,
)
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
    assert box.stage == 3 and box.label == "left pleural effusion"
    heart = next(f for f in reading.findings if f.label == "Cardiomegaly")
    assert heart.boxes == [] and heart.grounding_negative

    assert reading.progression_text == "Effusion has decreased."
    assert reading.findings_text == "Small left effusion. Cardiomegaly."
    assert reading.impression == "Small left effusion."
    assert reading.unparsed == []

    # One growing conversation: each call extends the previous one by exactly its new turns.
    for before, after in zip(backend.seen, backend.seen[1:], strict=False):
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
    assert len(grounding) == 2 and all("Output format:\n<|ref|>" in q for q in grounding)
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
    assert backend.seen[-2].turns[-1].text == "Write an example findings section for the CXR."


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
    assert backend.batches == [len(VOCAB)]
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
    last = backend.seen[-1]
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

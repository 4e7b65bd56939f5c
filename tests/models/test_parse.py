"""Parsing model output: table-driven, realistic and broken outputs; nothing may raise."""

from __future__ import annotations

import pytest

from models import parse_boxes, parse_choice, split_reasoning
from models._parse import clean_output, parse_laterality, parse_site

REASONING = [
    # (output, answer, reasoning starts with, boxed)
    (
        "**Thinking Process:** 1. PA film.\n**Final Answer:** $$\\boxed{C}$$",
        "C",
        "**Thinking",
        True,
    ),
    ("Step 1... so \\boxed{A}. Later \\boxed{B}", "A", "Step 1", True),
    ("The answer is \\boxed{\\text{pleural effusion}}", "pleural effusion", "The answer", True),
    ("nested \\boxed{\\frac{1}{2} of {the} lung}", "\\frac{1}{2} of {the} lung", "nested", True),
    ("\\boxed{<|ref|>effusion<|/ref|><|box|>(1,2),(3,4)<|/box|>}", "<|ref|>effusion", "", True),
    ("no box at all, just text", "no box at all, just text", "", False),
    ("cut off \\boxed{The lungs are cl", "The lungs are cl", "cut off", True),
    ("", "", "", False),
    ("\\(\\boxed{B}\\)", "B", "", True),
    ("weird \\boxed {  spaced }", "spaced", "weird", True),
]


@pytest.mark.parametrize(("output", "answer", "reasoning", "boxed"), REASONING)
def test_split_reasoning(output: str, answer: str, reasoning: str, boxed: bool) -> None:
    result = split_reasoning(output)
    assert result.answer.startswith(answer)
    assert result.reasoning.startswith(reasoning)
    assert "boxed" not in result.reasoning[-8:]
    assert result.boxed is boxed
    assert not result.reasoning.endswith("$$")


def test_unclosed_box_is_flagged() -> None:
    assert split_reasoning("x \\boxed{abc").complete is False
    assert split_reasoning("x \\boxed{abc}").complete is True


VIEW = ["PA", "AP", "LATERAL"]
CHOICES = [
    ("C", 2),
    ("(b)", 1),
    ("b) AP", 1),
    ("(A) PA", 0),
    ("A. PA view", 0),
    ("The answer is C.", 2),
    ("$$\\boxed{C}$$", 2),
    ("LATERAL", 2),
    ("This is a lateral radiograph.", 2),
    ("ap", 1),
    ("PA or AP", None),  # names two options
    ("(D)", None),  # beyond the options
    ("", None),
    ("garbage ionsb Output", None),
    ("Apical view", None),  # "ap" only as part of a word
]


@pytest.mark.parametrize(("answer", "index"), CHOICES)
def test_parse_choice(answer: str, index: int | None) -> None:
    assert parse_choice(answer, VIEW).index == index


def test_parse_choice_yes_no() -> None:
    options = ["Yes", "No"]
    assert parse_choice("(A) Yes", options).text == "Yes"
    assert parse_choice("No.", options).text == "No"
    assert parse_choice("B", options).letter == "B"
    assert parse_choice("Yes and no", options).index is None


BOXES = [
    # (output, [(label, x1, y1, x2, y2)], negative, understood)
    (
        "<|ref|>pneumothorax<|/ref|><|box|>(12,60),(18,87)<|/box|>",
        [("pneumothorax", 12, 60, 18, 87)],
        False,
        True,
    ),
    (
        "<|ref|> right lung <|/ref|> <|box|>(9.38, 20.09), (46.88, 77.23)<|/box|>",
        [("right lung", 9.38, 20.09, 46.88, 77.23)],
        False,
        True,
    ),
    (
        "<|ref|>effusion<|/ref|><|box|>(10,70),(30,90)<|/box|>"
        "<|ref|>effusion<|/ref|><|box|>(70,70),(90,90)<|/box|>",
        [("effusion", 10, 70, 30, 90), ("effusion", 70, 70, 90, 90)],
        False,
        True,
    ),
    ("<|box|>(5,5),(50,50)<|/box|>", [("opacity", 5, 5, 50, 50)], False, True),
    ("The opacity is at [12, 30, 40, 62].", [("opacity", 12, 30, 40, 62)], False, True),
    ("[12.5,30,40.25,62]", [("opacity", 12.5, 30, 40.25, 62)], False, True),
    ("(12,60),(18,87)", [("opacity", 12, 60, 18, 87)], False, True),
    ("No pneumothorax detected.", [], True, True),
    ("no pleural effusion is seen", [], True, True),
    ("<|ref|>x<|/ref|><|box|>(40,40),(20,20)<|/box|>", [("x", 20, 20, 40, 40)], False, True),
    ("<|ref|>x<|/ref|><|box|>(-2,0),(101,50)<|/box|>", [("x", 0, 0, 100, 50)], False, True),
    ("<|ref|>x<|/ref|><|box|>(10,10),(900,50)<|/box|>", [], False, False),  # out of range
    ("<|ref|>x<|/ref|><|box|>(10,10),(10,50)<|/box|>", [], False, False),  # empty
    ("<|ref|>x<|/ref|><|box|>(10,10),(2", [], False, False),  # cut off
    ("<|ref|>x<|/ref|><|box|>garbage<|/box|>", [], False, False),
    ("ionsb Output|inatedle tube", [], False, False),
    ("", [], False, False),
    (
        "<|object_ref_start|>heart<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>",
        [("heart", 10, 20, 50, 80)],
        False,
        True,
    ),
]


@pytest.mark.parametrize(("output", "boxes", "negative", "understood"), BOXES)
def test_parse_boxes(output: str, boxes: list[tuple], negative: bool, understood: bool) -> None:
    scale = 0.1 if "box_start" in output else 1.0  # Qwen's own 0-1000 grid
    result = parse_boxes(output, "opacity", scale=scale)
    got = [(b.label, b.x1, b.y1, b.x2, b.y2) for b in result.boxes]
    assert [g[0] for g in got] == [b[0] for b in boxes]
    assert [g[1:] for g in got] == [pytest.approx(b[1:]) for b in boxes]
    assert result.negative is negative
    assert result.understood is understood


def test_clipping_is_recorded() -> None:
    result = parse_boxes("<|box|>(-2,0),(101,50)<|/box|>", "x")
    assert result.boxes[0].clipped is True
    assert parse_boxes("<|box|>(2,0),(10,50)<|/box|>", "x").boxes[0].clipped is False


def test_rejections_are_recorded() -> None:
    result = parse_boxes("<|ref|>a<|/ref|><|box|>(1,1),(500,500)<|/box|>[1, 2, 3, 4]", "a")
    assert len(result.boxes) == 1 and len(result.rejected) == 1


@pytest.mark.parametrize(
    ("text", "side"),
    [
        ("Right lower lobe consolidation.", "right"),
        ("left basilar atelectasis", "left"),
        ("Bilateral effusions", "bilateral"),
        ("right and left apices", "bilateral"),
        ("The heart is enlarged", None),
        ("brightness", None),
    ],
)
def test_laterality(text: str, side: str | None) -> None:
    assert parse_laterality(text) == side


def test_site() -> None:
    assert parse_site("Opacity at the right costophrenic angle and base") == "costophrenic angle"
    assert parse_site("Base of the right lung, near the hilum") == "base"
    assert parse_site("nothing anatomical") is None


def test_clean_output_strips_control_tokens() -> None:
    text = "a<|im_start|>b<|image_pad|>c<|ref|>d\ufffd<|im_end|>"
    assert clean_output(text) == "abc<|ref|>d"


@pytest.mark.parametrize(
    ("answer", "index"),
    [
        ("Yes, there is a small effusion. No pneumothorax.", 0),
        ("No. The lungs are clear; yes, the heart is normal.", 1),
        ("**Yes**, a small left effusion.", 0),
        ("Yes - small effusion", 0),
        ("no", 1),
        ("Yes and no", None),  # no sentence of its own: ambiguous
        ("Not clearly", None),  # "no" only as part of a word
        ("There is no effusion, yes.", None),  # names both, neither leads
    ],
)
def test_parse_choice_yes_no_with_free_text(answer: str, index: int | None) -> None:
    assert parse_choice(answer, ["Yes", "No"]).index == index

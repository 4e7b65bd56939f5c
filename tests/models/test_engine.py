"""The engine's own small rules, without a model: how prefills are grouped into passes and how
a prompt's reusable prefix is measured."""

from __future__ import annotations

import torch

from models._engine import Prompt, Sampling, _common_prefix, _Request, _similar


def request(prompt_tokens: int, reused: int) -> _Request:
    """An admitted request whose prompt has ``prompt_tokens`` tokens, ``reused`` of them kept."""
    prompt = Prompt(
        ids=torch.zeros(prompt_tokens, dtype=torch.long),
        spans=[],
        digests=[],
        embed=lambda start: None,
        positions=lambda start, offset: None,
    )
    made = _Request(prompt, Sampling(max_new_tokens=1), keep=True, want_logits=False)
    made.reused = reused
    return made


def test_questions_of_similar_conversations_share_a_pass() -> None:
    a, b, c = request(1500, 1450), request(1700, 1630), request(1600, 1560)
    assert _similar([a, b, c]) == [[a, c, b]]


def test_a_new_study_is_not_padded_beside_a_long_conversation() -> None:
    """A first turn (690 tokens, none kept) and a long conversation's new image (690 tokens
    after 1260 kept) run the same number of tokens, but in one pass the first would attend
    over the other's 1950 keys."""
    fresh, continued = request(690, 0), request(1950, 1260)
    assert _similar([continued, fresh]) == [[fresh], [continued]]


def test_a_question_is_not_padded_to_an_image() -> None:
    image, question = request(700, 300), request(750, 700)
    assert _similar([image, question]) == [[image], [question]]


def test_common_prefix() -> None:
    a = torch.tensor([1, 2, 3, 4, 5])
    assert _common_prefix(a, torch.tensor([1, 2, 3, 9, 5]), 5) == 3
    assert _common_prefix(a, torch.tensor([1, 2, 3, 4, 5, 6]), 5) == 5
    assert _common_prefix(a, torch.tensor([1, 2, 3, 4, 5, 6]), 4) == 4
    assert _common_prefix(a, torch.tensor([7]), 1) == 0

"""The engine's own small rules, without a model: how a prompt's reusable prefix is measured."""

from __future__ import annotations

import torch

from models._engine import _common_prefix


def test_common_prefix() -> None:
    a = torch.tensor([1, 2, 3, 4, 5])
    assert _common_prefix(a, torch.tensor([1, 2, 3, 9, 5]), 5) == 3
    assert _common_prefix(a, torch.tensor([1, 2, 3, 4, 5, 6]), 5) == 5
    assert _common_prefix(a, torch.tensor([1, 2, 3, 4, 5, 6]), 4) == 4
    assert _common_prefix(a, torch.tensor([7]), 1) == 0

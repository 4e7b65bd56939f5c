"""The engine's own small rules, without a model: how a prompt's reusable prefix is measured and
where decoding rows are moved to sit side by side."""

from __future__ import annotations

import torch

from models._engine import Engine, Prompt, Sampling, _common_prefix, _Request, _Row, _Sequence


def test_common_prefix() -> None:
    a = torch.tensor([1, 2, 3, 4, 5])
    assert _common_prefix(a, torch.tensor([1, 2, 3, 9, 5]), 5) == 3
    assert _common_prefix(a, torch.tensor([1, 2, 3, 4, 5, 6]), 5) == 5
    assert _common_prefix(a, torch.tensor([1, 2, 3, 4, 5, 6]), 4) == 4
    assert _common_prefix(a, torch.tensor([7]), 1) == 0


def store_with(slots: dict[int, int], size: int = 8) -> tuple[Engine, dict[int, _Sequence]]:
    """An engine without a model whose one-layer store has ``size`` slots; ``slots`` maps each
    kept sequence's slot to its length. Every position holds its slot's number."""
    engine = object.__new__(Engine)
    engine.slots, engine.moves = size, 0
    engine._torch = torch
    engine.keys = [torch.arange(size, dtype=torch.float).view(size, 1, 1, 1).repeat(1, 1, 4, 1)]
    engine.values = [engine.keys[0].clone()]
    engine._kept = [
        _Sequence(slot, torch.zeros(length, dtype=torch.long), torch.zeros(0), set())
        for slot, length in slots.items()
    ]
    engine._free = [slot for slot in range(size) if slot not in slots]
    return engine, {seq.slot: seq for seq in engine._kept}


def decoding(seqs: list[_Sequence]) -> list[_Row]:
    request = _Request(
        Prompt(torch.zeros(1), [], [], lambda s: None, lambda s, o: None),
        Sampling(max_new_tokens=4),
        keep=True,
        want_logits=False,
    )
    return [_Row(request, seq, 0, tokens=[1]) for seq in seqs]


def test_rows_side_by_side_anywhere_do_not_move() -> None:
    engine, seqs = store_with({3: 2, 4: 2, 5: 2, 0: 4})
    engine._compact(decoding([seqs[3], seqs[4], seqs[5]]))
    assert engine.moves == 0 and [s.slot for s in engine._kept] == [3, 4, 5, 0]


def test_a_stray_row_moves_beside_the_others_into_a_free_slot_with_its_keys() -> None:
    """Rows in slots 1, 2 and 6, an idle prefix in slot 0, slot 3 free: the row in slot 6 moves
    to slot 3 (one move, nothing swapped), its keys with it; the idle prefix stays."""
    engine, seqs = store_with({1: 4, 2: 4, 6: 4, 0: 4})
    stray = seqs[6]
    engine._compact(decoding([seqs[1], seqs[2], stray]))
    assert engine.moves == 1 and stray.slot == 3 and seqs[0].slot == 0
    assert engine.keys[0][3].flatten().tolist() == [6.0] * 4
    assert 6 in engine._free and 3 not in engine._free

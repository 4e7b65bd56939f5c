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


def test_a_sampled_answer_is_cut_whole_when_the_store_must_shrink() -> None:
    """Five sequences in use in six 4-token slots, every row at its slot's end: the next token
    needs 8-token slots, of which the budget holds three. The longest row is one of a sampled
    request's two (its prompt's slot and a copy each): both are cut, which frees three slots,
    and the greedy answers go on. Before, one sample was cut (freeing nothing, its sibling
    still running) and then a greedy answer beside it."""
    engine, seqs = store_with({0: 1, 1: 1, 2: 1, 3: 1, 4: 1}, size=6)
    engine.capacity, engine.max_slots, engine._step = 4, 6, 0
    engine.layers, engine.kv_heads, engine.head_dim = 1, 1, 1
    engine.dtype, engine.device = torch.float, torch.device("cpu")
    engine._token_bytes = 8
    engine.memory_bytes = 24 * engine._token_bytes
    engine.cut_rows = 0
    sampled = _Request(
        Prompt(torch.zeros(1), [], [], lambda s: None, lambda s, o: None),
        Sampling(max_new_tokens=9, rows=2, do_sample=True),
        keep=True,
        want_logits=False,
    )
    parent, first, second = seqs[0], seqs[1], seqs[3]
    sampled.parent, sampled.spares = parent, [first, second]
    sampled.rows = [_Row(sampled, first, 1, tokens=[7] * 4), _Row(sampled, second, 1, [7] * 4)]
    greedy = [decoding([seqs[slot]])[0] for slot in (2, 4)]
    for row in greedy:
        row.tokens = [7] * 4
        row.request.parent = row.seq
        row.request.rows = [row]
    for seq in seqs.values():
        seq.busy = True
    # Every row is as long as the others; the first listed is a sample, the next a greedy one.
    engine._running = [sampled.rows[0], greedy[0], sampled.rows[1], greedy[1]]
    rows = engine._ready_rows()
    assert engine.cut_rows == 2 and all(row.finished for row in sampled.rows)
    assert {id(row) for row in rows} == {id(row) for row in greedy}
    assert not any(row.finished for row in greedy)
    assert (engine.slots, engine.capacity) == (3, 8)

"""The engine's key/value store within a memory budget, on the tiny model: it never grows past
the budget, turns wait for room and come out token for token as without a budget, an answer
that outgrows the store ends there (and says so), and a conversation the store can never hold
fails alone, in words the worker reads as permanent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest

from models import (
    Conversation,
    DecodeOptions,
    Message,
    ModelInfo,
    Reader,
    ReaderConfig,
    Reading,
)
from models._engine import Engine, Sampling, _filled, _Request
from models._hf import TransformersBackend
from tests.models.test_concurrency import one_image_question, study

VOCAB = ("Pleural Effusion",)


@pytest.fixture
def backend(tiny_backend: TransformersBackend) -> Iterator[TransformersBackend]:
    tiny_backend.reset_cache()
    yield tiny_backend
    tiny_backend.reset_cache()


@contextmanager
def bounded(
    backend: TransformersBackend, tokens: int, capacity: int = 1024
) -> Iterator[tuple[Engine, list[int]]]:
    """The backend served by an engine whose store holds ``tokens`` tokens in all; yields it
    and the sizes (slots x capacity, in tokens) its store was ever given."""
    saved = backend.engine
    token_bytes = saved._token_bytes
    engine = Engine(
        backend.model,
        eos_ids=backend.eos_ids,
        pad_id=backend.pad_id,
        capacity=capacity,
        memory_bytes=tokens * token_bytes,
    )
    sizes: list[int] = [engine.slots * engine.capacity]
    allocate = engine._allocate

    def spied(slots: int, capacity: int) -> None:
        sizes.append(slots * capacity)
        allocate(slots, capacity)

    engine._allocate = spied  # type: ignore[method-assign]
    backend.engine = engine
    try:
        yield engine, sizes
    finally:
        backend.engine = saved


def texts(reading: Reading) -> list[str]:
    """Every answer of the reading, sampled ones included."""
    turns = [t for s in reading.stages for t in s.turns] + list(reading.report_turns)
    return [text for t in turns for text in (t.raw, *t.samples)]


@pytest.mark.parametrize(
    ("samples", "slots"),
    [(0, 2), (2, 4)],
    ids=["greedy in two slots", "two samples a question in four slots"],
)
def test_studies_wait_for_room_and_read_as_without_a_budget(
    backend: TransformersBackend, samples: int, slots: int
) -> None:
    """Four studies in flight in a store of a few 1024-token sequences (with sampled answers,
    whose copies take slots of their own): the store never grows past it, turns wait for room,
    prefixes are dropped and computed again, and every reading is token for token the reading
    done alone with no budget."""
    config = ReaderConfig(findings_vocabulary=VOCAB, max_new_tokens=3, consistency_samples=samples)
    info = ModelInfo("raddraft/tiny-qwen2.5-vl", backend.revision, True, "transformers", "tiny")
    reader = Reader(backend, config, info)
    studies = [study(seed) for seed in range(20, 24)]
    readings = [reader.read([c], [p]) for c, p in studies]
    sampled = [sum(len(t.samples) for s in r.stages for t in s.turns) for r in readings]
    assert all(n >= samples for n in sampled) and (samples > 0) == any(sampled)
    alone = [texts(r) for r in readings]
    with bounded(backend, tokens=slots * 1024) as (engine, sizes):
        with ThreadPoolExecutor(max_workers=len(studies)) as pool:
            together = list(pool.map(lambda s: texts(reader.read([s[0]], [s[1]])), studies))
        assert max(sizes) <= slots * 1024
        assert engine.waits > 0 and engine.cut_rows == 0
    assert together == alone


def test_an_answer_the_store_cannot_hold_ends_there_and_the_other_goes_on(
    backend: TransformersBackend,
) -> None:
    """Two answers outgrow a store of two 1024-token sequences, which can only become one of
    2048: the longer is cut (an answer without its stop token, as at a token limit) and the
    other, moved into the smaller store, runs to its limit. Both are token for token the
    answers given with no budget, the cut one as far as it went."""
    options = DecodeOptions(max_new_tokens=1200)
    pair = [one_image_question(30), one_image_question(31)]
    backend.engine.eos_ids = set()  # random weights: no early stop, so the answers grow
    try:
        free = [backend.generate(c, options) for c in pair]
        with bounded(backend, tokens=2 * 1024) as (engine, sizes):
            engine.eos_ids = set()
            got = backend.generate_batch(pair, options)
            assert engine.cut_rows == 1 and max(sizes) <= 2 * 1024
    finally:
        backend.engine.eos_ids = set(backend.eos_ids)
    lengths = sorted(g.completion_tokens[0] for g in got)
    assert lengths[0] < 1200 and lengths[1] == 1200
    assert all(g.finish_reasons == ["length"] for g in got)
    for alone, batched in zip(free, got, strict=True):
        assert batched.token_ids[0] == alone.token_ids[0][: len(batched.token_ids[0])]


def test_a_conversation_the_store_can_never_hold_fails_alone(
    backend: TransformersBackend,
) -> None:
    """A 64-token store: a one-image conversation (68 tokens with the test's small image) is
    refused before any work, in the words the worker fails for good; sent to the engine anyway,
    it fails alone with the setting to raise; and the engine serves the next request."""
    small = one_image_question(40)
    with bounded(backend, tokens=64, capacity=64) as (engine, _):
        with pytest.raises(ValueError, match="exceeds the context") as refused:
            backend.generate(small, DecodeOptions(max_new_tokens=4))
        assert "RADDRAFT_MODEL_KV_CACHE_GIB" in str(refused.value)
        prompt: Any = backend._prompt(backend.encode(small))
        with pytest.raises(MemoryError, match="RADDRAFT_MODEL_KV_CACHE_GIB"):
            engine.submit(prompt, Sampling(max_new_tokens=4))
        text = Conversation("s", (Message("user", "Findings?"),))
        assert backend.generate(text, DecodeOptions(max_new_tokens=4)).completion_tokens[0] > 0


def test_a_prompt_arriving_at_the_edge_waits_rather_than_cut_an_answer_under_way(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two 1024-token sequences of store: a prompt arrives in the very step an answer needs its
    1025th position (a store of one 2048-token sequence). The prompt waits and runs after it;
    before, it took the second slot and the answer was cut to make room."""
    long, short = one_image_question(32), one_image_question(33)
    backend.engine.eos_ids = set()  # random weights: no early stop, so the answer grows
    try:
        free = [
            backend.generate(long, DecodeOptions(max_new_tokens=1100)).token_ids[0],
            backend.generate(short, DecodeOptions(max_new_tokens=20)).token_ids[0],
        ]
        with bounded(backend, tokens=2 * 1024) as (engine, _):
            engine.eos_ids = set()
            prompt = backend._prompt(backend.encode(short))
            arriving = _Request(prompt, Sampling(max_new_tokens=20), keep=True, want_logits=False)
            real = engine._pass
            sent: list[bool] = []

            def step(joining: list[_Request]) -> None:
                real(joining)
                rows = engine._running
                if rows and _filled(rows[0].seq, rows[0]) == engine.capacity and not sent:
                    engine._waiting.put(arriving)  # admitted at the next step: that one
                    sent.append(True)

            monkeypatch.setattr(engine, "_pass", step)
            answer = backend.generate(long, DecodeOptions(max_new_tokens=1100)).token_ids[0]
            assert arriving.done.wait(60) and arriving.result is not None
            assert sent and engine.cut_rows == 0 and engine.waits >= 1
    finally:
        backend.engine.eos_ids = set(backend.eos_ids)
    assert answer == free[0] and len(answer) == 1100
    assert arriving.result.tokens[0] == free[1]


def test_the_longest_conversation_the_store_promises_it_holds(
    backend: TransformersBackend,
) -> None:
    """A budget of 1,500 tokens from 512-token slots (no doubling of 512 is 1,500): the backend
    fits a conversation to ``max_tokens``, and the store then holds all of it. Before, slots
    only doubled (to 1,024), so an answer the backend allowed was cut at 1,001 tokens and a
    1,223-token prompt failed as a store out of room, which the worker retries."""
    question = Conversation("s", (Message("user", "Findings?"),))
    with bounded(backend, tokens=1500, capacity=512) as (engine, sizes):
        engine.eos_ids = set()  # random weights: no early stop, so the answer grows
        assert engine.max_tokens == 1500
        got = backend.generate(question, DecodeOptions(max_new_tokens=1400))
        assert got.prompt_tokens + 1400 <= engine.max_tokens
        assert got.completion_tokens == [1400] and engine.cut_rows == 0
        long = Conversation("s", (Message("user", "Findings? " * 600),))
        assert backend.generate(long, DecodeOptions(max_new_tokens=4)).prompt_tokens > 1024
        assert max(sizes) <= 1500


def test_after_a_long_answer_the_store_takes_back_its_slots(backend: TransformersBackend) -> None:
    """Three 512-token slots; a 700-token answer leaves one slot of 1,024. Two sampled answers
    to one question need three slots (the prompt's and a copy each): with nothing else in use
    the store returns to three slots of 512 and answers; before, it failed for good."""
    question = Conversation("s", (Message("user", "Findings?"),))
    sampled = DecodeOptions(max_new_tokens=4, do_sample=True, n=2, seed=1)
    with bounded(backend, tokens=3 * 512, capacity=512) as (engine, sizes):
        fresh = backend.generate(question, sampled).token_ids
        engine.eos_ids = set()  # random weights: no early stop, so the answer grows
        long = Conversation("s", (Message("user", "Long?"),))
        assert backend.generate(long, DecodeOptions(max_new_tokens=700)).completion_tokens == [700]
        engine.eos_ids = set(backend.eos_ids)  # as the sampled answers above were given
        assert (engine.slots, engine.capacity) == (1, 1024)
        assert backend.generate(question, sampled).token_ids == fresh
        assert (engine.slots, engine.capacity) == (3, 512) and max(sizes) <= 3 * 512


def test_a_store_that_runs_out_of_memory_while_resized_stays_usable(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three slots of 512 become one of 1,024 for a long answer, and memory runs out after the
    first layer's new tensor: that turn fails, and the store is what every layer still has
    (one slot of 512), so the next conversation is answered. Before, the store kept its old
    size over layers of the new one and every later step indexed past them."""
    import torch

    with bounded(backend, tokens=3 * 512, capacity=512) as (engine, _):
        real = torch.zeros
        made: list[int] = []
        longer = (1, engine.kv_heads, 1024, engine.head_dim)  # one slot of 1,024 tokens

        def zeros(*args: Any, **kwargs: Any) -> Any:
            if engine.capacity == 512 and args and args[0] == longer:
                made.append(1)
                if len(made) > 1:
                    raise torch.OutOfMemoryError("out of memory (test)")
            return real(*args, **kwargs)

        engine.eos_ids = set()
        monkeypatch.setattr(torch, "zeros", zeros)
        long = Conversation("s", (Message("user", "Long?"),))
        with pytest.raises(torch.OutOfMemoryError):
            backend.generate(long, DecodeOptions(max_new_tokens=700))
        monkeypatch.setattr(torch, "zeros", real)
        engine.eos_ids = set(backend.eos_ids)
        assert (engine.slots, engine.capacity) == (1, 512)
        question = Conversation("s", (Message("user", "Findings?"),))
        assert backend.generate(question, DecodeOptions(max_new_tokens=4)).completion_tokens[0]


def test_a_request_waiting_for_room_is_not_overtaken(backend: TransformersBackend) -> None:
    """Three slots; a long answer holds one. Two sampled answers to a question need three (the
    prompt's and a copy each), so that request waits; a greedy question arriving after it
    waits behind it instead of taking a free slot. Before, later requests took every slot
    that came free, and under steady load the sampled request waited for ever."""
    with bounded(backend, tokens=3 * 512, capacity=512) as (engine, _):
        engine.eos_ids = set()

        def request(text: str, sampling: Sampling) -> _Request:
            prompt = backend._prompt(backend.encode(Conversation("s", (Message("user", text),))))
            return _Request(prompt, sampling, keep=True, want_logits=False)

        long = request("Long?", Sampling(max_new_tokens=300))
        sampled = request("Findings?", Sampling(max_new_tokens=4, rows=2, do_sample=True, seed=1))
        later = request("Impression?", Sampling(max_new_tokens=4))
        engine._ensure_thread()
        engine._waiting.put(long)
        deadline = time.monotonic() + 60
        while not long.prefilled and time.monotonic() < deadline:
            time.sleep(0.001)
        engine._waiting.put(sampled)
        while not engine.waits and time.monotonic() < deadline:
            time.sleep(0.001)
        assert engine.waits and not long.done.is_set()  # it waits while the long answer runs
        engine._waiting.put(later)
        for each in (long, sampled, later):
            assert each.done.wait(60) and each.error is None
        assert sampled.admitted < later.admitted
        assert sampled.result is not None and len(sampled.result.tokens) == 2

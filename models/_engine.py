"""The transformers backend's batching engine: the turns of every study in flight share forward
passes, the way continuous batching serves them.

* **Slots.** Keys and values of many sequences live in one preallocated tensor per layer,
  ``[slots, kv_heads, capacity, head_dim]``, grown by doubling within ``max_slots`` and a memory
  budget (``memory_bytes``; the last growth is to the budget's whole length, so ``max_tokens``
  is what one slot can reach). Past them idle sequences are dropped, least recently used first;
  a request with no room waits for sequences in use to end, and those after it wait behind it
  (with nothing in use, the slots first go back to the shortest length that holds it, and so to
  more of them); an answer that would outgrow the store ends there (a sampled request's answers
  together, since only then do their slots free). A sequence owns a slot for as long as it is
  kept: a study's CXRTrek conversation keeps its keys and values from turn to turn, so its
  images are encoded once and earlier turns are never re-read; when the reading ends
  (:meth:`Engine.forget`) its sequences go.
* **Prefix reuse.** A request's tokens are compared with every kept sequence; the longest common
  token prefix (stopping before an image whose pixels differ: the placeholders of two studies'
  images are the same tokens) is reused. The request *continues* that sequence when it extends the
  sequence's last prompt (the next turn of the same conversation), otherwise it *forks* it: a new
  slot gets a copy of the common prefix's keys and values (branches of one image prefix, such as
  the single-turn report prompts). Nothing else is ever shared, so two studies never mix.
* **Steps.** One engine thread runs everything: each step admits the waiting requests, then runs
  one forward pass of everything at once, packed into one sequence of tokens: one token for
  every sequence that is generating, then every admitted request's new prompt tokens (an image,
  a question). Nothing is padded, and a question never takes a pass of its own (see
  :class:`_Plan`). A sequence that finishes leaves at once; a request that arrives joins at the
  next step. A pass synchronises with the host for the chosen tokens (the stop check); one
  with new prompts also reads their first tokens and the largest positions of new images.
* **Positions.** Qwen2.5-VL's 3D (mrope) positions follow one rule: every segment starts at the
  largest position so far plus one. So a tail's positions are the model's own ``get_rope_index``
  over the tail alone, shifted by the kept prefix's largest position plus one: exactly where a
  full run would put them.

Attention is transformers' own function (sdpa, or eager for a model loaded so) over the slot
tensors: the engine registers an attention implementation of its own, which serves a packed
pass by its plan (the decoding rows as one batch over their slots, each prompt over its own
slot, causally) and hands every other call to the implementation the model was loaded with, so
the model's own ``generate`` runs as before. A small cache object's ``update`` writes each
token's keys and values at its own slot and offset.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The setting that sizes the store (named in what a full store says; the backend's too).
KV_SETTING = "RADDRAFT_MODEL_KV_CACHE_GIB"

_MIN_CAPACITY = 1024  # tokens per slot at start (a two-image CXRTrek reading is ~3000)
# A request waits one step for a prefix another request of its batch is about to write when that
# saves at least this many tokens of prefill.
_DEFER_MIN_TOKENS = 16
# The attention implementation the engine registers: this, then the model's own (sdpa, eager).
_PACKED_PREFIX = "raddraft-packed+"
# The rows of a packed pass's layout tensor (see Engine._pass).
_SLOT, _OFFSET, _TOKEN, _POSITION, _LAST = range(5)


@dataclass
class Prompt:
    """A tokenised conversation as the engine consumes it."""

    ids: Any  # torch.LongTensor (L,), on the host
    spans: list[tuple[int, int]]  # (first, end) placeholder positions of each image
    digests: list[str]  # of each image's pixels
    embed: Callable[[int], Any]  # embeddings (L - start, hidden) of tokens start: (images in)
    positions: Callable[[int, int], Any]  # 3D positions (3, L - start) of tokens start:, + offset


@dataclass
class Sampling:
    """How a request chooses its tokens."""

    max_new_tokens: int
    rows: int = 1  # > 1 only when sampling: that many answers to the same prompt
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(eq=False)
class _Sequence:
    slot: int
    ids: Any  # host LongTensor: the tokens whose keys and values the slot holds
    top: Any  # host LongTensor: the largest 3D position among ids[: i + 1], for each i
    images: set[tuple[int, str]]  # (start, digest) of each image among ids
    prompt_len: int = 0  # the prompt of the request it served last
    busy: bool = False
    used: int = 0  # step of last use, for eviction


@dataclass
class Result:
    """Tokens per row, and where the request's time went."""

    tokens: list[list[int]]
    prompt_tokens: int
    cached_tokens: int
    queued_seconds: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    logits: Any = None  # the prompt's next-token logits (fp32, host), when asked for


@dataclass(eq=False)
class _Request:
    prompt: Prompt
    sampling: Sampling
    keep: bool  # keep the sequence afterwards (False: a probe, e.g. logits only)
    want_logits: bool
    submitted: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    result: Result | None = None
    parent: _Sequence | None = None
    rows: list[_Row] = field(default_factory=list)
    spares: list[_Sequence] = field(default_factory=list)  # the samples' slots, when sampling
    reused: int = 0
    generator: Any = None
    admitted: float = 0.0
    prefilled: float = 0.0
    logits: Any = None


@dataclass(eq=False)
class _Row:
    """One decoding sequence of a request."""

    request: _Request
    seq: _Sequence
    next_position: int
    tokens: list[int] = field(default_factory=list)
    finished: bool = False


@dataclass
class _Segment:
    """A run of new prompt tokens in a packed pass: ``count`` tokens from the pass's token
    ``first``, written into ``slot`` from ``start``."""

    first: int
    count: int
    slot: int
    start: int
    mask: Any = None  # additive (1, 1, count, start + count); None: plain causal (start 0)


@dataclass
class _Plan:
    """How the tokens of a packed pass attend, given to attention in place of a mask.

    A packed pass is one sequence of tokens (batch 1): first one token for each decoding row,
    then each admitted request's new prompt tokens. Everything in a layer but attention works
    token by token, so only attention needs to know whose token is whose: the decoding rows
    attend as one batch over their slots (consecutive: :meth:`Engine._compact`), each prompt on
    its own over its slot. Nothing is padded: a question's forty tokens no longer take a pass of
    their own, nor pad to an image's seven hundred."""

    rows: int  # decoding rows: the pass's first tokens, one each
    row_first: int  # the first of their consecutive slots
    row_mask: Any  # additive (rows, 1, 1, row_kv); None when every row sees all of row_kv
    row_kv: int  # keys the rows read: the longest row's
    segments: list[_Segment]

    def attend(
        self,
        attention: Callable[..., Any],
        module: Any,
        query: Any,
        keys: Any,
        values: Any,
        **kwargs: Any,
    ) -> tuple[Any, None]:
        """Attention output (1, tokens, heads, head_dim) of the pass's queries (1, heads, tokens,
        head_dim) over ``keys`` and ``values`` (one layer's whole store), each part by
        ``attention`` (transformers' sdpa or eager function)."""
        kwargs.pop("is_causal", None)
        parts = []
        if self.rows:
            span = slice(self.row_first, self.row_first + self.rows)
            k, v = keys[span, :, : self.row_kv], values[span, :, : self.row_kv]
            q = query[0, :, : self.rows].transpose(0, 1).unsqueeze(2)  # (rows, heads, 1, dim)
            out, _ = attention(module, q, k, v, self.row_mask, **kwargs)
            parts.append(out[:, 0])
        for seg in self.segments:
            end = seg.start + seg.count
            q = query[:, :, seg.first : seg.first + seg.count]
            k, v = keys[seg.slot : seg.slot + 1, :, :end], values[seg.slot : seg.slot + 1, :, :end]
            out, _ = attention(module, q, k, v, seg.mask, is_causal=True, **kwargs)
            parts.append(out[0])
        if len(parts) == 1:
            return parts[0][None], None
        import torch

        return torch.cat(parts)[None], None


class _PackedCache:
    """The cache a packed pass's layers see: ``update`` writes each token's keys and values at
    its own slot and offset and hands attention the layer's whole store (the :class:`_Plan`
    says which part each query reads)."""

    def __init__(
        self,
        engine: Engine,
        slots: Any,
        offsets: Any,
        kv_len: int,
        block: tuple[int, int, int] | None = None,
    ) -> None:
        self.engine = engine
        self.slots = slots  # (tokens,) device long: each token's slot
        self.offsets = offsets  # (tokens,) device long: each token's offset in its slot
        self.kv_len = kv_len
        # (first slot, rows, offset): decoding rows only, in consecutive slots at one offset
        # (every single-stream step), written by a plain strided copy, not by index.
        self.block = block

    def update(
        self, key: Any, value: Any, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Any, Any]:
        keys, values = self.engine.keys[layer_idx], self.engine.values[layer_idx]
        if self.block is not None:
            first, rows, offset = self.block
            keys[first : first + rows, :, offset] = key[0].transpose(0, 1)
            values[first : first + rows, :, offset] = value[0].transpose(0, 1)
        else:
            keys[self.slots, :, self.offsets] = key[0].transpose(0, 1).to(keys.dtype)
            values[self.slots, :, self.offsets] = value[0].transpose(0, 1).to(values.dtype)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_len

    @property
    def is_compileable(self) -> bool:
        return False


def _packed_attention(
    original: Callable[..., Any], serve: Callable[..., Any]
) -> Callable[..., Any]:
    """An attention function for transformers' registry: a packed pass's :class:`_Plan` is
    served by the plan with ``serve``, any other call (the model's own ``generate``) by
    ``original``, the implementation the model was loaded with."""

    def attention(
        module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
    ) -> tuple[Any, Any]:
        if isinstance(attention_mask, _Plan):
            return attention_mask.attend(serve, module, query, key, value, **kwargs)
        output: tuple[Any, Any] = original(module, query, key, value, attention_mask, **kwargs)
        return output

    return attention


def _use_packed_attention(text_config: Any) -> str:
    """Route the language model's attention through :func:`_packed_attention`, registered
    under a name of its own for the implementation the model has (its masks stay that
    implementation's), so that everything but a packed pass runs exactly as before. Returns
    that implementation's name. A plan's parts take an additive mask: sdpa and eager serve
    them as they are; any other implementation's plans are served by sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward

    original = str(text_config._attn_implementation or "eager").removeprefix(_PACKED_PREFIX)
    name = _PACKED_PREFIX + original
    own = ALL_ATTENTION_FUNCTIONS.get_interface(original, eager_attention_forward)
    serve = own if original in ("sdpa", "eager") else sdpa_attention_forward
    AttentionInterface.register(name, _packed_attention(own, serve))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    text_config._attn_implementation = name
    return original


class Engine:
    """Serves generation requests from any number of threads (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: list[int],
        pad_id: int,
        slots: int = 8,
        max_slots: int = 256,
        capacity: int = _MIN_CAPACITY,
        memory_bytes: int | None = None,
    ) -> None:
        import torch

        self._torch = torch
        self.model = model
        # The modules every pass calls, looked up once (transformers' accessors and
        # configuration attributes cost tens of microseconds a call, paid every token).
        self._language = model.model.language_model
        self._embed = self._language.embed_tokens
        self._lm_head = model.lm_head
        self.eos_ids = set(eos_ids)
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        text = getattr(model.config, "text_config", model.config)
        self.layers = int(text.num_hidden_layers)
        self.kv_heads = int(text.num_key_value_heads)
        self._layer_types = set(getattr(text, "layer_types", None) or ["full_attention"])
        # Eager attention needs every mask spelled out, in the dtype's lowest value as
        # transformers' own are; sdpa takes -inf and runs a new prompt plainly causal.
        self._eager = _use_packed_attention(text) == "eager"
        self.head_dim = int(
            getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        )
        # Bytes of keys and values one token of one sequence takes, over all layers.
        self._token_bytes = (
            self.layers * 2 * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8
        )
        # The store never outgrows this (None: no limit); see _take_slot and _room.
        self.memory_bytes = memory_bytes
        if memory_bytes is not None:
            slots = min(slots, self._slots_fitting(capacity))
            if slots < 1:
                raise ValueError(
                    f"a key/value store of {memory_bytes / 2**30:.2f} GiB cannot hold one "
                    f"sequence of {capacity} tokens ({self._token_bytes} bytes a token)"
                )
        self.slots = slots
        self.max_slots = max_slots
        self.capacity = capacity
        self._start_capacity = capacity  # what _shrink returns slots to
        self.keys: list[Any] = [None] * self.layers
        self.values: list[Any] = [None] * self.layers
        self._allocate(slots, capacity)
        self._free = list(range(slots))
        self._kept: list[_Sequence] = []
        self._waiting: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        # Image digests whose sequences are no longer wanted (a reading ended), from any thread;
        # the engine thread drops them at its next step, since it alone touches the store.
        self._forgotten: queue.SimpleQueue[frozenset[str]] = queue.SimpleQueue()
        self._running: list[_Row] = []
        self._arange: Any = None  # see _positions
        self._deferred: list[_Request] = []
        self._step = 0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # What a reading's wall time is made of: seconds inside the model's forward passes
        # (including the wait for their tokens) and the number of passes. Read by benchmarks.
        self.forward_seconds = 0.0
        self.forward_passes = 0
        # The part of forward_seconds spent in passes carrying new prompt tokens (with the
        # decoding rows of that step), and their number.
        self.prefill_seconds = 0.0
        self.prefill_passes = 0
        self.rows_decoded = 0
        self.most_rows = 0  # the most sequences (decoding rows and prompts) one pass has served
        self.moves = 0  # sequences moved to sit beside the rest of their pass
        self.cut_rows = 0  # answers ended early because the store could not hold them
        self.waits = 0  # requests that waited a step for room in the store

    # ------------------------------------------------------------------ storage
    @property
    def max_tokens(self) -> int | None:
        """The longest sequence the store could ever hold (alone), or None for no limit."""
        if self.memory_bytes is None:
            return None
        return int(self.memory_bytes // self._token_bytes)

    @property
    def store_bytes(self) -> int:
        """What the store holds now, allocated: every slot at the current capacity."""
        return self.slots * self.capacity * self._token_bytes

    def _slots_fitting(self, capacity: int) -> int:
        """How many slots of ``capacity`` tokens the budget holds (``max_slots`` without one)."""
        if self.memory_bytes is None:
            return self.max_slots
        return int(self.memory_bytes // (capacity * self._token_bytes))

    def _allocate(self, slots: int, capacity: int) -> None:
        """Resize the store, keeping what fits. One tensor at a time, so that memory holds the
        new store and only one old tensor at once (not two stores)."""
        torch = self._torch
        shape = (slots, self.kv_heads, capacity, self.head_dim)
        try:
            for store in (self.keys, self.values):
                for layer in range(self.layers):
                    new = torch.zeros(shape, dtype=self.dtype, device=self.device)
                    old = store[layer]
                    if old is not None:
                        s, c = min(int(old.shape[0]), slots), min(int(old.shape[2]), capacity)
                        new[:s, :, :c] = old[:s, :, :c]
                    store[layer] = new
                    del old
        except BaseException:
            # Out of memory part way: some layers have the new shape, some the old. What
            # every layer has is what the store is now (the failed step then forgets what it
            # kept), or the next steps would index past the smaller layers and fail forever.
            tensors = [t for t in (*self.keys, *self.values) if t is not None]
            if len(tensors) == 2 * self.layers:
                self.slots = min(int(t.shape[0]) for t in tensors)
                self.capacity = min(int(t.shape[2]) for t in tensors)
            raise
        self.slots, self.capacity = slots, capacity

    def _take_slot(self, spare: _Sequence | None = None) -> int:
        """A free slot: the lowest (so decoding rows tend to be consecutive slots); else the
        store grows (doubling, within ``max_slots`` and the memory budget); only then the least
        recently used idle sequence other than ``spare`` is dropped (a study in flight keeps
        its prefix as long as memory allows). Raises :class:`_NoRoom` when every sequence is
        in use and the store cannot grow."""
        if not self._free:
            grown = min(2 * self.slots, self.max_slots, self._slots_fitting(self.capacity))
            idle = [s for s in self._kept if not s.busy and s is not spare]
            if grown > self.slots:
                self._free = list(range(self.slots, grown))
                self._allocate(grown, self.capacity)
            elif idle:
                self._drop(min(idle, key=lambda s: s.used))
            else:
                raise _NoRoom
        self._free.sort()
        return self._free.pop(0)

    def _room(self, needed: int) -> bool:
        """Make every slot hold at least ``needed`` tokens (doubling). Over the budget, idle
        sequences go and the store keeps fewer, longer slots, its sequences moved to the lowest
        ones first. False when even that cannot hold the sequences in use."""
        if needed <= self.capacity:
            return True
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        if self.max_tokens is not None and needed <= self.max_tokens < capacity:
            # One slot of the whole budget rather than a doubling past it: max_tokens, which
            # the backend fits conversations to, is then what the store really holds.
            capacity = self.max_tokens
        if self.memory_bytes is None or self.slots <= self._slots_fitting(capacity):
            self._allocate(self.slots, capacity)
            return True
        slots = min(self.slots, self._slots_fitting(capacity))
        busy = sum(1 for seq in self._kept if seq.busy)
        if slots < busy:
            return False
        idle = sorted((seq for seq in self._kept if not seq.busy), key=lambda s: s.used)
        for seq in idle[: max(len(idle) - (slots - busy), 0)]:  # the least recently used go
            self._drop(seq)
        feeding = {id(row.seq): row for row in self._running}
        self._place([(seq, _filled(seq, feeding.get(id(seq)))) for seq in self._kept])
        self._allocate(slots, capacity)
        taken = {seq.slot for seq in self._kept}
        self._free = [slot for slot in range(slots) if slot not in taken]
        return True

    def _shrink(self, needed: int) -> bool:
        """With nothing in use: slots back to the fewest tokens (the starting capacity, doubled)
        that hold ``needed``, as many as the budget allows, when that is more slots than now;
        idle sequences longer than that go, the rest move to the lowest slots. A long
        conversation lengthens the slots and, within a budget, lowers their number: without
        this the store stayed so, and a request needing several slots (sampled answers) failed
        although a fresh store holds it. True when the store changed."""
        if self.memory_bytes is None or any(seq.busy for seq in self._kept):
            return False
        capacity = self._start_capacity
        while capacity < needed:
            capacity *= 2
        slots = min(self._slots_fitting(capacity), self.max_slots)
        if capacity >= self.capacity or slots <= self.slots:
            return False
        for seq in [s for s in self._kept if _filled(s, None) > capacity]:
            self._drop(seq)
        self._place([(seq, _filled(seq, None)) for seq in self._kept])
        self._allocate(slots, capacity)
        taken = {seq.slot for seq in self._kept}
        self._free = [slot for slot in range(slots) if slot not in taken]
        return True

    def _drop(self, seq: _Sequence) -> None:
        self._kept.remove(seq)
        self._free.append(seq.slot)

    def _compact(self, rows: list[_Row]) -> None:
        """Move the rows' sequences into consecutive slots, swapping out whatever idle prefix
        sits there, so that a pass reads its rows' caches as one view. A sequence moves once
        when it joins the decoding rows; gathering the rows' caches instead copied every one of
        them at every token (on a GPU with 64 studies in flight, by arithmetic, as many bytes a
        step as the weights). The window is the one already holding most of the rows, and of
        those the one with fewest other sequences to swap out."""
        n = len(rows)
        taken = sorted(row.seq.slot for row in rows)
        if taken[-1] - taken[0] == n - 1:  # every step but those where rows change
            return
        # Per slot: +1 a row's, -1 another sequence's (a swap), 0 free; summed over each window.
        weight = np.zeros(self.slots + 1)
        weight[[seq.slot + 1 for seq in self._kept]] = -1
        weight[[slot + 1 for slot in taken]] = self.slots + 1  # a row outweighs every swap
        sums = np.cumsum(weight)
        first = int(np.argmax(sums[n:] - sums[:-n]))
        self._place([(row.seq, _filled(row.seq, row)) for row in rows], first)

    def _place(self, placed: list[tuple[_Sequence, int]], first: int = 0) -> None:
        """Move these sequences (each with how many of its slot's positions hold data) into
        slots ``first`` .. ``first + len(placed) - 1``, swapping out whatever other sequence
        sits there: into free slots first, then over the shortest others (a move copies both)."""
        window = range(first, first + len(placed))
        occupant = {s.slot: s for s in self._kept}
        holes = [slot for slot in window if slot not in {seq.slot for seq, _ in placed}]
        holes.sort(key=lambda slot: int(occupant[slot].ids.shape[0]) if slot in occupant else -1)
        for seq, length in placed:
            if seq.slot in window:
                continue
            hole, here = holes.pop(0), seq.slot
            other = occupant.pop(hole, None)
            kept = int(other.ids.shape[0]) if other is not None else 0  # an idle one: no row
            for store in (*self.keys, *self.values):
                saved = store[hole, :, :kept].clone() if kept else None
                store[hole, :, :length] = store[here, :, :length]
                if saved is not None:
                    store[here, :, :kept] = saved
            seq.slot = hole
            if other is not None:
                other.slot = here
                occupant[here] = other
            else:
                self._free.remove(hole)
                self._free.append(here)
            self.moves += 1

    def _new_sequence(self, spare: _Sequence | None = None) -> _Sequence:
        """An empty kept sequence in a slot of its own (raises :class:`_NoRoom`)."""
        torch = self._torch
        empty = torch.zeros(0, dtype=torch.long)
        seq = _Sequence(self._take_slot(spare), empty, empty.clone(), set())
        self._kept.append(seq)
        return seq

    def _copy(self, source: _Sequence, length: int, into: _Sequence | None = None) -> _Sequence:
        """A sequence (``into``, else a new one) holding ``source``'s first ``length`` tokens,
        keys and values copied."""
        seq = into if into is not None else self._new_sequence(spare=source)
        for layer in range(self.layers):
            self.keys[layer][seq.slot, :, :length] = self.keys[layer][source.slot, :, :length]
            self.values[layer][seq.slot, :, :length] = self.values[layer][source.slot, :, :length]
        seq.images = {(s, d) for s, d in source.images if s < length}
        seq.ids, seq.top = source.ids[:length].clone(), source.top[:length].clone()
        return seq

    # ------------------------------------------------------------------ requests
    def submit(
        self, prompt: Prompt, sampling: Sampling, *, keep: bool = True, logits: bool = False
    ) -> Result:
        """Run one request to the end (blocking the calling thread, not the engine)."""
        return self.submit_many([prompt], sampling, keep=keep, logits=logits)[0]

    def submit_many(
        self, prompts: list[Prompt], sampling: Sampling, *, keep: bool = True, logits: bool = False
    ) -> list[Result]:
        """Run several requests at once (they join the same step) and wait for all of them.
        A request the engine could not serve is refused here, in the caller's thread: failing
        in the engine's step, it would fail every other request in flight with it."""
        if any(int(p.ids.shape[0]) == 0 for p in prompts):
            raise ValueError("an empty prompt: there is nothing to answer")
        if sampling.rows > 1 and not sampling.do_sample:
            raise ValueError(f"{sampling.rows} answers to one prompt need sampling (do_sample)")
        requests = [_Request(p, sampling, keep=keep, want_logits=logits) for p in prompts]
        self._ensure_thread()
        for request in requests:
            self._waiting.put(request)
        for request in requests:
            request.done.wait()
        for request in requests:
            if request.error is not None:
                raise request.error
        return [r.result for r in requests if r.result is not None]

    def forget(self, digests: frozenset[str]) -> None:
        """Drop, at the next step, the kept sequences holding any of these images (a reading is
        over: nothing will continue its conversation). Without it, finished studies' prefixes
        stay until the store is full, growing it to ``max_slots``. A sequence in use is left."""
        self._forgotten.put(digests)

    def _drop_forgotten(self) -> None:
        while True:
            try:
                digests = self._forgotten.get_nowait()
            except queue.Empty:
                return
            for seq in [s for s in self._kept if not s.busy]:
                if any(digest in digests for _, digest in seq.images):
                    self._drop(seq)

    def reset(self) -> None:
        """Forget every kept sequence (call only with no request in flight)."""
        self._kept.clear()
        self._free = list(range(self.slots))

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="raddraft-engine", daemon=True
                )
                self._thread.start()

    def _serve(self) -> None:
        torch = self._torch
        with torch.inference_mode():
            while True:
                admitted, self._deferred = self._deferred, []
                if not self._running and not admitted:
                    admitted.append(self._waiting.get())  # idle: sleep until work arrives
                while True:
                    try:
                        admitted.append(self._waiting.get_nowait())
                    except queue.Empty:
                        break
                try:
                    self._step += 1
                    self._drop_forgotten()
                    self._pass(self._admit_all(admitted) if admitted else [])
                except BaseException as error:  # every request in flight learns of it
                    log.exception("engine step failed")
                    failed = [row.request for row in self._running] + admitted + self._deferred
                    for request in failed:
                        request.error = error
                        request.done.set()
                    self._running, self._deferred = [], []
                    self.reset()

    # ------------------------------------------------------------------ admission
    def _match(
        self, prompt: Prompt, candidates: list[_Sequence] | None = None
    ) -> tuple[_Sequence | None, int]:
        """The kept sequence sharing the longest token prefix with ``prompt``: at least one token
        is left to run, and reuse stops at the start of an image whose pixels differ (or that
        the prefix would cut in two)."""
        ids = prompt.ids
        best, best_len = None, 0
        if candidates is None:
            candidates = self._kept
            if prompt.spans:
                # Reuse past the first image needs that image: only sequences holding it are
                # compared (a study's own dialogue and branches), not every study in flight.
                # The text before it (the system prompt) is not worth a copy from another study.
                first = (prompt.spans[0][0], prompt.digests[0])
                candidates = [seq for seq in candidates if first in seq.images]
        for seq in candidates:
            limit = min(int(seq.ids.shape[0]), int(ids.shape[0]) - 1)
            if limit <= best_len:
                continue
            reuse = _common_prefix(seq.ids, ids, limit)
            for (start, end), digest in zip(prompt.spans, prompt.digests, strict=True):
                if start >= reuse:
                    break
                if (start, digest) not in seq.images or end > reuse:
                    reuse = start
                    break
            if reuse > best_len:
                best, best_len = seq, reuse
        return best, best_len

    def _admit(self, request: _Request) -> None:
        """Give the request a sequence holding as much of its prompt as can be reused, and its
        samples their slots. Raises :class:`_NoRoom` having changed nothing."""
        prompt = request.prompt
        seq, reuse = self._match(prompt)
        spares: list[_Sequence] = []
        try:
            if request.sampling.rows > 1 or request.sampling.do_sample:
                # Samples decode in copies, so the kept sequence stays at the prompt; their
                # slots are taken now, since after the prefill there is no waiting.
                for _ in range(request.sampling.rows):
                    spares.append(self._new_sequence(spare=seq))
                    spares[-1].busy = True
            if seq is not None and not seq.busy and request.keep and reuse >= seq.prompt_len - 1:
                # The next turn of the same conversation: continue it in place.
                seq.ids, seq.top = seq.ids[:reuse], seq.top[:reuse]
                seq.images = {(s, d) for s, d in seq.images if s < reuse}
            elif seq is not None and reuse > 0:
                try:
                    seq = self._copy(seq, reuse)
                except _NoRoom:  # no second slot: run the whole prompt where the prefix was
                    reuse, seq = 0, self._new_sequence()
            else:
                reuse = 0
                seq = self._new_sequence()
        except _NoRoom:
            for spare in spares:
                self._drop(spare)
            raise
        request.spares = spares
        seq.busy = True
        seq.used = self._step
        request.parent, request.reused = seq, reuse
        request.admitted = time.perf_counter()

    # ------------------------------------------------------------------ passes
    def _defer(self, requests: list[_Request]) -> list[_Request]:
        """The requests to admit now; the others wait one step for an earlier request of this
        batch to write the prefix they share with it (branches of one image prefix), so that
        they copy it instead of computing it again."""
        torch = self._torch
        now: list[_Request] = []
        pending: list[_Sequence] = []
        for request in requests:
            prompt = request.prompt
            _, kept = self._match(prompt)
            _, shared = self._match(prompt, pending)
            if shared > kept + _DEFER_MIN_TOKENS:
                self._deferred.append(request)
                continue
            now.append(request)
            images = {(s, d) for (s, _), d in zip(prompt.spans, prompt.digests, strict=True)}
            pending.append(_Sequence(-1, prompt.ids, torch.zeros(0), images))
        return now

    def _admit_all(self, requests: list[_Request]) -> list[_Request]:
        """Admit ``requests``, each with room in the store for its prompt. A request the store
        has no room for now waits for sequences in use to end; one it could never hold fails.
        Room is for the decoding rows' next tokens too: an answer under way is never cut to
        make room for a prompt that can wait."""
        admitted: list[_Request] = []
        rows_need = max((_filled(r.seq, r) + 1 for r in self._running), default=0)
        waiting = False  # a request waits for room: the later ones wait behind it
        for request in self._defer(requests):
            if waiting:
                # Never overtaken: one needing several slots (sampled answers) would otherwise
                # wait for as long as later requests kept taking each slot that came free.
                self._deferred.append(request)
                continue
            try:
                self._admit(request)
            except _NoRoom:
                if not (self._running or admitted):
                    if self._shrink(int(request.prompt.ids.shape[0])):
                        self._deferred.append(request)  # tried again next step, in more slots
                        continue
                    # Nothing in use will end: the store cannot hold this one at all.
                    self._fail(request, MemoryError(self._full_message()))
                else:
                    self._deferred.append(request)
                    self.waits += 1
                    waiting = True
                continue
            length = int(request.prompt.ids.shape[0])
            if self._room(max(length, rows_need)):
                admitted.append(request)
            elif (self._running or admitted) and (
                self.max_tokens is None or length <= self.max_tokens
            ):
                # Sequences in use hold the room it needs: it waits for them to end.
                self._unadmit(request)
                self._deferred.append(request)
                self.waits += 1
                waiting = True
            else:
                self._fail(request, MemoryError(self._full_message()))
        return admitted

    def _unadmit(self, request: _Request) -> None:
        """Undo :meth:`_admit`: the request waits; its sequence stays, idle, for reuse."""
        for spare in request.spares:
            self._drop(spare)
        if request.parent is not None:
            request.parent.busy = False
        request.parent, request.spares, request.reused = None, [], 0

    def _fail(self, request: _Request, error: BaseException) -> None:
        """End an admitted (or admissible) request with ``error``; its sequences go."""
        for seq in [request.parent, *request.spares]:
            if seq is not None and seq in self._kept:
                self._drop(seq)
        request.error = error
        request.done.set()

    def _full_message(self) -> str:
        budget = "no limit" if self.memory_bytes is None else f"{self.memory_bytes / 2**30:.2f} GiB"
        return (
            f"the key/value store ({budget}, {self.slots} sequences of {self.capacity} tokens) "
            f"has no room for this conversation; raise {KV_SETTING} or lower "
            "RADDRAFT_STUDIES_IN_FLIGHT"
        )

    def _tails(self, requests: list[_Request]) -> list[tuple[Any, Any, int]]:
        """Each admitted request's new tokens after its reused prefix: their embeddings
        (images in), 3D positions, and the slot offset they are written at."""
        tails = []
        for request in requests:
            seq = request.parent
            assert seq is not None
            start = int(seq.ids.shape[0])
            offset = int(seq.top[-1]) + 1 if start else 0
            tails.append(
                (
                    request.prompt.embed(request.reused),
                    request.prompt.positions(request.reused, offset),
                    start,
                )
            )
        return tails

    def _prefilled(self, requests: list[_Request], positions: list[Any], logits: Any) -> None:
        """After a pass that ran the requests' tails: their sequences hold the new tokens, their
        first tokens are chosen and their rows start decoding."""
        torch = self._torch
        for request, p in zip(requests, positions, strict=True):
            seq = request.parent
            assert seq is not None
            prompt = request.prompt
            seq.prompt_len = int(prompt.ids.shape[0])
            before = int(seq.top[-1]) if seq.top.shape[0] else -1
            seq.ids = prompt.ids  # it held the prompt's first `reused` ids (_admit); never edited
            images = {
                (start, digest)
                for (start, _), digest in zip(prompt.spans, prompt.digests, strict=True)
                if start >= request.reused
            }
            if images:
                tops = torch.cummax(p.max(0).values.cpu(), 0).values.clamp(min=before)
            else:  # text only: one position a token from the prefix's largest plus one, no read
                tops = torch.arange(before + 1, before + 1 + int(p.shape[1]))
            seq.top = torch.cat([seq.top, tops])
            seq.images |= images
        firsts = self._choose(logits, requests)
        now = time.perf_counter()
        for index, request in enumerate(requests):
            request.prefilled = now
            if request.want_logits:
                request.logits = logits[index].cpu()
            self._start_rows(request, firsts[index])

    def _start_rows(self, request: _Request, firsts: list[int]) -> None:
        """The request's decoding rows, each with its first token; finished ones leave."""
        seq = request.parent
        assert seq is not None
        next_position = int(seq.top[-1]) + 1
        if not request.spares:
            rows = [_Row(request, seq, next_position)]
        else:
            length = int(seq.ids.shape[0])
            rows = [
                _Row(request, self._copy(seq, length, into=spare), next_position)
                for spare in request.spares
            ]
        request.rows = rows
        for row, token in zip(rows, firsts, strict=True):
            self._append(row, token)
        self._running.extend(r for r in rows if not r.finished)
        self._finish_if_done(request)

    def _pass(self, joining: list[_Request]) -> None:
        """One forward pass of everything: the next token of every decoding row and the new
        prompt tokens of the ``joining`` requests, packed into one sequence (see :class:`_Plan`).
        A row's fed tokens join its sequence's ids when it finishes (keys and values are
        written at once; only the ids wait)."""
        torch = self._torch
        started = time.perf_counter()
        rows = self._ready_rows()
        if not rows and not joining:
            return
        tails = self._tails(joining)
        n = len(rows)
        fed = [len(r.tokens) - 1 for r in rows]  # tokens already fed before this one
        starts = [int(r.seq.ids.shape[0]) + k for r, k in zip(rows, fed, strict=True)]
        # The pass's layout, copied to the device at once, one row per _SLOT, _OFFSET, ...:
        # each token's slot and offset in it; each decoding row's token and its position; and
        # where each row's and each prompt's last token sits (decoding rows first, then each
        # prompt's tail).
        slots, at = [r.seq.slot for r in rows], list(starts)
        segments = []
        for request, (embeds, _, start) in zip(joining, tails, strict=True):
            assert request.parent is not None
            count = int(embeds.shape[0])
            causal = self._causal_mask(count, start) if start or self._eager else None
            segments.append(_Segment(len(slots), count, request.parent.slot, start, causal))
            slots += [request.parent.slot] * count
            at += range(start, start + count)
        lasts = [*range(n), *(seg.first + seg.count - 1 for seg in segments)]
        layout = torch.tensor(
            [
                slots,
                at,
                _padded([r.tokens[-1] for r in rows], len(slots)),
                _padded([r.next_position + k for r, k in zip(rows, fed, strict=True)], len(slots)),
                _padded(lasts, len(slots)),
            ]
        ).to(self.device)
        embeds = [tail[0].to(self.dtype) for tail in tails]
        places = [tail[1] for tail in tails]
        if rows:
            embeds.insert(0, self._embed(layout[_TOKEN, :n]).to(self.dtype))
            places.insert(0, layout[_POSITION, :n].view(1, -1).expand(3, -1))
        row_mask = self._row_mask(starts, layout[_OFFSET, :n])
        plan = _Plan(n, slots[0], row_mask, max(starts, default=0) + 1, segments)
        self.most_rows = max(self.most_rows, n + len(segments))
        out = self._language(
            inputs_embeds=(embeds[0] if len(embeds) == 1 else torch.cat(embeds))[None],
            position_ids=(places[0] if len(places) == 1 else torch.cat(places, dim=1))[:, None],
            attention_mask=dict.fromkeys(self._layer_types, plan),
            cache=_PackedCache(
                self,
                layout[_SLOT],
                layout[_OFFSET],
                max(at) + 1,
                block=(slots[0], n, starts[0]) if row_mask is None and not segments else None,
            ),
            use_cache=True,
        )
        hidden = out.last_hidden_state[0]
        if segments:  # each row's one token, and each prompt's last
            hidden = hidden[layout[_LAST, : len(lasts)]]
        logits = self._lm_head(hidden).float()
        if rows:
            self._decoded(rows, self._choose_rows(logits[:n], rows))
        self._account(started, prefill=bool(joining))
        if joining:
            self._prefilled(joining, [tail[1] for tail in tails], logits[n:])

    def _ready_rows(self) -> list[_Row]:
        """The decoding rows, sorted by slot, each slot with room for the row's next token,
        their sequences in consecutive slots (:meth:`_compact`)."""
        rows = self._running
        if not rows:
            return []
        # Each row writes its next token at position _filled: every slot must reach one past it.
        while not self._room(max(_filled(r.seq, r) for r in rows) + 1):
            # The store can hold no longer slots for these sequences: the longest answer among
            # those at the edge ends here, and its sequence may go.
            over = [r for r in rows if _filled(r.seq, r) + 1 > self.capacity]
            longest = max(over, key=lambda r: len(r.tokens))
            # A sampled request's slots are freed only when all its rows end: its rows are cut
            # together, or cutting one would free nothing and the next cut would fall on
            # another answer.
            for row in [r for r in longest.request.rows if not r.finished]:
                self._cut(row)
            rows = self._running
            if not rows:
                return []
        self._compact(rows)
        return sorted(rows, key=lambda r: r.seq.slot)

    def _row_mask(self, starts: list[int], offsets: Any) -> Any:
        """Decoding rows' additive mask (rows, 1, 1, keys): row r sees its slot's keys up to its
        own offset (``offsets``: the device copy of ``starts``). None when every row sits at one
        offset and so sees every key."""
        if len(set(starts)) <= 1:
            return None
        hidden = self._positions(max(starts) + 1)[None, :] > offsets[:, None]
        return self._additive(hidden)[:, None, None, :]

    def _causal_mask(self, count: int, start: int) -> Any:
        """A prompt tail's additive mask (1, 1, count, start + count): its token i sees the
        slot's keys up to its own offset start + i. Written as the floor kept above that
        diagonal: one pass over the mask rather than a comparison, then a fill (an image's
        700 tokens against 2,000 keys took 2 ms that way, 0.8 ms this)."""
        shape = (count, start + count)
        mask = self._torch.full(shape, self._floor, dtype=self.dtype, device=self.device)
        return mask.triu_(start + 1)[None, None]

    def _positions(self, length: int) -> Any:
        """0 .. length - 1 on the device (kept: a mask is built in most passes)."""
        if self._arange is None or int(self._arange.shape[0]) < length:
            self._arange = self._torch.arange(max(length, self.capacity), device=self.device)
        return self._arange[:length]

    @property
    def _floor(self) -> float:
        """What a mask adds where a key is hidden: -inf; eager: the dtype's lowest value."""
        return float(self._torch.finfo(self.dtype).min) if self._eager else float("-inf")

    def _additive(self, hidden: Any) -> Any:
        """0 where attended, the floor where ``hidden``, built once a pass: given a boolean
        mask, sdpa converts it in every layer."""
        mask = self._torch.zeros(hidden.shape, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(hidden, self._floor)

    def _decoded(self, rows: list[_Row], chosen: list[int]) -> None:
        """Each row's chosen token appended; finished rows leave, finished requests end."""
        self.rows_decoded += len(rows)
        finished: list[_Request] = []
        for r, token in zip(rows, chosen, strict=True):
            self._append(r, token)
            if r.finished and r.request not in finished:
                finished.append(r.request)
        self._running = [r for r in self._running if not r.finished]
        for request in finished:
            self._finish_if_done(request)

    def _cut(self, row: _Row) -> None:
        """End this row's answer now: the store cannot hold one more token of it. Its request
        sees an answer that ended without its stop token, as at any token limit (the reading
        flags it as truncated)."""
        log.warning("an answer was cut after %d tokens: %s", len(row.tokens), self._full_message())
        row.finished = True
        self.cut_rows += 1
        self._running = [r for r in self._running if not r.finished]
        self._finish_if_done(row.request)

    # ------------------------------------------------------------------ choosing
    def _pick(self, logits: Any, sampling: Sampling, generator: Any) -> Any:
        torch = self._torch
        if not sampling.do_sample:
            return torch.argmax(logits, dim=-1)
        probs = torch.softmax(logits / max(sampling.temperature, 1e-5), dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
            drop = sorted_probs.cumsum(-1) - sorted_probs > sampling.top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).flatten()

    def _generator(self, request: _Request) -> Any:
        if request.generator is None:
            torch = self._torch
            request.generator = torch.Generator(device=self.device)
            seed = request.sampling.seed
            request.generator.manual_seed(seed if seed is not None else 0)
        return request.generator

    def _choose(self, logits: Any, requests: list[_Request]) -> list[list[int]]:
        """First tokens of each request's rows, one host synchronisation for all."""
        torch = self._torch
        if not any(request.sampling.do_sample for request in requests):
            return [[token] for token in torch.argmax(logits, dim=-1).tolist()]
        picks = []
        for index, request in enumerate(requests):
            rows = request.sampling.rows if request.sampling.do_sample else 1
            row_logits = logits[index : index + 1].expand(rows, -1)
            generator = self._generator(request) if request.sampling.do_sample else None
            picks.append(self._pick(row_logits, request.sampling, generator))
        flat = torch.cat(picks).tolist()
        out, at = [], 0
        for pick in picks:
            out.append(flat[at : at + int(pick.shape[0])])
            at += int(pick.shape[0])
        return out

    def _choose_rows(self, logits: Any, rows: list[_Row]) -> list[int]:
        """Next token of every row: greedy rows by one argmax, sampled rows per request."""
        torch = self._torch
        chosen = torch.argmax(logits, dim=-1)
        sampled: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            if row.request.sampling.do_sample:
                sampled.setdefault(id(row.request), []).append(index)
        for indices in sampled.values():
            request = rows[indices[0]].request
            # Draws go to the request's rows in its own order, whatever slots they sit in, so a
            # seeded request gives the same answers however the store is laid out.
            indices.sort(key=lambda i: request.rows.index(rows[i]))
            at = torch.tensor(indices, device=self.device)
            chosen[at] = self._pick(logits[at], request.sampling, self._generator(request))
        picked: list[int] = chosen.tolist()
        return picked

    def _append(self, row: _Row, token: int) -> None:
        row.tokens.append(token)
        if token in self.eos_ids or len(row.tokens) >= row.request.sampling.max_new_tokens:
            row.finished = True

    def _finish_if_done(self, request: _Request) -> None:
        if not all(r.finished for r in request.rows):
            return
        now = time.perf_counter()
        parent = request.parent
        assert parent is not None
        torch = self._torch
        for row in request.rows:
            row.seq.busy = False
            fed = row.tokens[:-1]  # the last token was chosen, never fed
            if fed:
                row.seq.ids = torch.cat([row.seq.ids, torch.tensor(fed, dtype=torch.long)])
                at = torch.arange(len(fed)) + row.next_position
                row.seq.top = torch.cat([row.seq.top, at])
            if row.seq is not parent:
                self._drop(row.seq)  # a sample's copy: its answer never joins a conversation
        parent.busy = False
        parent.used = self._step
        if not request.keep:
            self._drop(parent)
        request.result = Result(
            tokens=[r.tokens for r in request.rows],
            prompt_tokens=int(request.prompt.ids.shape[0]),
            cached_tokens=request.reused,
            queued_seconds=request.admitted - request.submitted,
            prefill_seconds=request.prefilled - request.admitted,
            decode_seconds=now - request.prefilled,
            logits=request.logits,
        )
        request.done.set()

    def _account(self, started: float, *, prefill: bool = False) -> None:
        spent = time.perf_counter() - started
        self.forward_seconds += spent
        self.forward_passes += 1
        if prefill:
            self.prefill_seconds += spent
            self.prefill_passes += 1


class _NoRoom(Exception):
    """Every sequence in the store is in use and the store may not grow: wait for one to end."""


def _filled(seq: _Sequence, row: _Row | None) -> int:
    """How many positions of the sequence's slot hold keys and values: its ids, and the tokens
    its decoding row has fed so far (they join the ids when the row ends)."""
    return int(seq.ids.shape[0]) + (len(row.tokens) - 1 if row is not None else 0)


def _common_prefix(a: Any, b: Any, limit: int) -> int:
    """How many leading ids two host tensors share, at most ``limit``. Compared as numpy views:
    the engine matches every request against its study's sequences, and torch's per-call
    overhead made that a tenth of a millisecond each."""
    differ = np.flatnonzero(a.numpy()[:limit] != b.numpy()[:limit])
    return int(differ[0]) if differ.size else limit


def _padded(values: list[int], length: int) -> list[int]:
    """``values`` followed by zeros up to ``length`` (a row of a pass's layout)."""
    return values + [0] * (length - len(values))

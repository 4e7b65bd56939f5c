"""The transformers backend's batching engine: the turns of every study in flight share forward
passes, the way continuous batching serves them.

* **Slots.** Keys and values of many sequences live in one preallocated tensor per layer,
  ``[slots, kv_heads, capacity, head_dim]``, grown by doubling within ``max_slots`` and a memory
  budget (``memory_bytes``); past them idle sequences are dropped, least recently used first, a
  request with no room waits for sequences in use to end, and an answer that would outgrow the
  store ends there. A sequence owns a slot for as long as it is kept: a study's CXRTrek
  conversation keeps its keys and values from turn to turn, so its images are encoded once and
  earlier turns are never re-read; when the reading ends (:meth:`Engine.forget`) its sequences
  go.
* **Prefix reuse.** A request's tokens are compared with every kept sequence; the longest common
  token prefix (stopping before an image whose pixels differ: the placeholders of two studies'
  images are the same tokens) is reused. The request *continues* that sequence when it extends the
  sequence's last prompt (the next turn of the same conversation), otherwise it *forks* it: a new
  slot gets a copy of the common prefix's keys and values (branches of one image prefix, such as
  the single-turn report prompts). Nothing else is ever shared, so two studies never mix.
* **Steps.** One engine thread runs everything: each step admits the waiting requests and runs
  their new tokens as padded prefill passes (one for each group of similar length and similar
  whole prompt), then one
  decode pass for every sequence that is generating. A sequence that finishes leaves at once;
  a request that arrives joins at the next step. Each pass synchronises with the host once: the
  chosen tokens, needed for the stop check.
* **Positions.** Qwen2.5-VL's 3D (mrope) positions follow one rule: every segment starts at the
  largest position so far plus one. So a tail's positions are the model's own ``get_rope_index``
  over the tail alone, shifted by the kept prefix's largest position plus one: exactly where a
  full run would put them.

Attention is transformers' own (sdpa or eager) over the slot tensors with an explicit additive 4D
mask (each row sees its own slot up to its own length; none for decode rows at one offset or a
new sequence's causal prompt), through a small cache object whose ``update`` writes each row's
keys and values at its own offset.
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


class _StepCache:
    """What the attention layers see as their cache for one forward pass: ``update`` writes each
    row's new keys and values into its slot at its own offset and returns the rows' keys and
    values up to the longest of them (a view when the rows are consecutive slots).

    ``start`` set: every row writes at that same offset into consecutive slots (``span``), a
    plain strided copy with no index tensors (a single stream's decode step is always so)."""

    def __init__(
        self,
        engine: Engine,
        slots: Any,
        write_at: Any,
        kv_len: int,
        span: tuple[int, int] | None,
        start: int | None = None,
    ) -> None:
        self.engine = engine
        self.slots = slots  # (rows, 1) device long, or None with ``start``
        self.write_at = write_at  # (rows, q) device long, or None with ``start``
        self.kv_len = kv_len
        self.span = span  # (first slot, rows) when consecutive, else None
        self.start = start

    def update(
        self, key: Any, value: Any, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Any, Any]:
        keys, values = self.engine.keys[layer_idx], self.engine.values[layer_idx]
        if self.start is not None and self.span is not None:
            first, rows = self.span
            end = self.start + int(key.shape[2])
            keys[first : first + rows, :, self.start : end] = key
            values[first : first + rows, :, self.start : end] = value
        else:
            keys[self.slots, :, self.write_at] = key.transpose(1, 2).to(keys.dtype)
            values[self.slots, :, self.write_at] = value.transpose(1, 2).to(values.dtype)
        if self.span is not None:
            first, rows = self.span
            return (
                keys[first : first + rows, :, : self.kv_len],
                values[first : first + rows, :, : self.kv_len],
            )
        # index_select of the slice copies only the rows' first kv_len positions, one kernel.
        index = self.slots.flatten()
        return (
            keys[:, :, : self.kv_len].index_select(0, index),
            values[:, :, : self.kv_len].index_select(0, index),
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_len

    @property
    def is_compileable(self) -> bool:
        return False


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
        # The two modules every pass calls, looked up once (transformers' accessors and
        # configuration attributes cost tens of microseconds a call, paid every token).
        self._language = model.model.language_model
        self._lm_head = model.lm_head
        self.eos_ids = set(eos_ids)
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        text = getattr(model.config, "text_config", model.config)
        self.layers = int(text.num_hidden_layers)
        self.kv_heads = int(text.num_key_value_heads)
        self._layer_types = set(getattr(text, "layer_types", None) or ["full_attention"])
        # Both add the mask to the scores: sdpa's -inf is what it makes of a boolean mask itself,
        # eager attention's is the dtype's lowest value, as transformers' own masks are.
        self._sdpa = getattr(text, "_attn_implementation", "eager") == "sdpa"
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
        self._deferred: list[_Request] = []
        self._step = 0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # What a reading's wall time is made of: seconds inside the model's forward passes
        # (including the wait for their tokens) and the number of passes. Read by benchmarks.
        self.forward_seconds = 0.0
        self.forward_passes = 0
        self.prefill_seconds = 0.0  # the part of forward_seconds spent in prefill passes
        self.prefill_passes = 0
        self.rows_decoded = 0
        self.most_rows = 0  # the most sequences one forward pass has served
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
        for store in (self.keys, self.values):
            for layer in range(self.layers):
                new = torch.zeros(shape, dtype=self.dtype, device=self.device)
                old = store[layer]
                if old is not None:
                    s, c = min(int(old.shape[0]), slots), min(int(old.shape[2]), capacity)
                    new[:s, :, :c] = old[:s, :, :c]
                store[layer] = new
                del old
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

    def _drop(self, seq: _Sequence) -> None:
        self._kept.remove(seq)
        self._free.append(seq.slot)

    def _compact(self, rows: list[_Row]) -> None:
        """Move the rows' sequences into slots 0 .. ``len(rows) - 1``, swapping out whatever idle
        prefix sits there, so that a decode pass reads its rows' caches as one view. A sequence
        moves once when it joins the pass; gathering the rows' caches instead copied every one
        of them at every token (on a GPU with 64 studies in flight, by arithmetic, as many bytes
        a step as the weights)."""
        end = len(rows)
        if all(row.seq.slot < end for row in rows):  # every step but those where rows change
            return
        self._place([(row.seq, _filled(row.seq, row)) for row in rows])

    def _place(self, placed: list[tuple[_Sequence, int]]) -> None:
        """Move these sequences (each with how many of its slot's positions hold data) into
        slots 0 .. ``len(placed) - 1``, swapping out whatever other sequence sits there."""
        end = len(placed)
        holes = sorted(set(range(end)) - {seq.slot for seq, _ in placed})
        if not holes:
            return
        occupant = {s.slot: s for s in self._kept}
        for seq, length in placed:
            if seq.slot < end:
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
        """Run several requests at once (they join the same step) and wait for all of them."""
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
                    if admitted:
                        self._prefill(admitted)
                    if self._running:
                        self._decode()
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
    def _forward(
        self, inputs: Any, positions: Any, slots: list[int], starts: list[int], lengths: list[int]
    ) -> Any:
        """One forward pass of ``rows`` sequences, each writing its new tokens at its start;
        returns the logits (rows, vocab) at each row's last real token. ``inputs``: embeddings
        (rows, q, hidden), images in; or token ids (rows, q), which the model embeds itself."""
        torch = self._torch
        rows, q = int(inputs.shape[0]), int(inputs.shape[1])
        self.most_rows = max(self.most_rows, rows)
        kv_len = max(starts) + q
        assert kv_len <= self.capacity  # made room for by the caller (_room)
        device = self.device
        consecutive = slots == list(range(slots[0], slots[0] + rows))
        span = (slots[0], rows) if consecutive else None
        mask: Any = None
        last: Any = None  # each row's last real token, when a pass is padded
        fresh = rows == 1 and starts[0] == 0 and self._sdpa  # eager needs its causal mask
        if consecutive and len(set(starts)) == 1 and (q == 1 or fresh):
            # Decode rows that all sit at one offset see every key their slots hold, and a new
            # sequence's prompt is plainly causal: no mask (sdpa takes its causal or fast
            # kernels, as transformers' own first pass does) and no index tensors.
            cache = _StepCache(self, None, None, kv_len, span, start=starts[0])
        else:
            # One small host-to-device copy a pass: slots, starts and last-token indices.
            table = torch.tensor([slots, starts, [n - 1 for n in lengths]]).to(device)
            write_at = table[1][:, None] + torch.arange(q, device=device)[None, :]
            # Row r's query i sees its slot's keys up to its own position start_r + i. Built
            # additive, once: given a boolean mask, sdpa converts it in every layer.
            hidden = (
                torch.arange(kv_len, device=device)[None, None, None, :]
                > write_at[:, None, :, None]
            )
            floor = float("-inf") if self._sdpa else torch.finfo(self.dtype).min
            mask = torch.zeros(hidden.shape, dtype=self.dtype, device=device).masked_fill_(
                hidden, floor
            )
            cache = _StepCache(self, table[0][:, None], write_at, kv_len, span)
            last = table[2]
        # The language model itself: embeddings (image features in) and 3D positions are ready;
        # the masks given per layer type, so that transformers builds none of its own.
        given = "input_ids" if inputs.dtype == torch.long else "inputs_embeds"
        out = self._language(
            **{given: inputs},
            position_ids=positions,
            attention_mask=dict.fromkeys(self._layer_types, mask),
            cache=cache,
            use_cache=True,
        )
        if last is None:  # no padding: every row's last token is the pass's last
            hidden = out.last_hidden_state[:, -1]
        else:
            hidden = out.last_hidden_state[torch.arange(rows, device=device), last]
        return self._lm_head(hidden).float()

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

    def _prefill(self, requests: list[_Request]) -> None:
        """Admit ``requests`` and run their new tokens: one padded pass for each group of
        similar length (an image's hundreds of tokens are not padded onto a question's few).
        A request the store has no room for waits for sequences in use to end."""
        admitted: list[_Request] = []
        for request in self._defer(requests):
            try:
                self._admit(request)
            except _NoRoom:
                if not (self._running or admitted):
                    # Nothing in use will end: the store cannot hold this one at all.
                    self._fail(request, MemoryError(self._full_message()))
                else:
                    self._deferred.append(request)
                    self.waits += 1
                continue
            admitted.append(request)
        for group in self._grouped(admitted):
            started = time.perf_counter()
            tails = self._tails(group)
            embeds, pos = self._padded([t[0] for t in tails], [t[1] for t in tails])
            slots = [r.parent.slot for r in group]  # type: ignore[union-attr]
            starts = [t[2] for t in tails]
            logits = self._forward(embeds, pos, slots, starts, [len(t[0]) for t in tails])
            self._account(started, prefill=True)
            self._prefilled(group, [t[1] for t in tails], logits)

    def _grouped(self, requests: list[_Request]) -> list[list[_Request]]:
        """The passes of ``requests`` (:func:`_similar`), each with room in the store; a group
        without room runs one by one, and a prompt the store cannot hold at all fails alone."""
        passes: list[list[_Request]] = []
        for group in _similar(requests):
            # A padded pass writes every row up to the longest start plus the longest tail.
            if self._room(max(r.reused for r in group) + max(_tail(r) for r in group)):
                passes.append(group)
                continue
            for request in group:
                length = int(request.prompt.ids.shape[0])
                if self._room(length):
                    passes.append([request])
                elif (self._running or passes) and (
                    self.max_tokens is None or length <= self.max_tokens
                ):
                    # Sequences in use hold the room it needs: it waits for them to end.
                    self._unadmit(request)
                    self._deferred.append(request)
                    self.waits += 1
                else:
                    self._fail(request, MemoryError(self._full_message()))
        return passes

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

    def _padded(self, embeds: list[Any], positions: list[Any]) -> tuple[Any, Any]:
        """Rows of different lengths as one right-padded batch (padding: harmless positions,
        never attended; each row's logits are read at its own last token)."""
        torch = self._torch
        width, hidden = max(int(e.shape[0]) for e in embeds), int(embeds[0].shape[1])
        batch = torch.zeros(len(embeds), width, hidden, dtype=self.dtype, device=self.device)
        pos = torch.zeros(3, len(embeds), width, dtype=torch.long, device=self.device)
        for row, (e, p) in enumerate(zip(embeds, positions, strict=True)):
            n = int(e.shape[0])
            batch[row, :n] = e.to(self.dtype)
            pos[:, row, :n] = p
            pos[:, row, n:] = p[:, -1:] + 1
        return batch, pos

    def _prefilled(self, requests: list[_Request], positions: list[Any], logits: Any) -> None:
        """After a pass that ran the requests' tails: their sequences hold the new tokens, their
        first tokens are chosen and their rows start decoding."""
        torch = self._torch
        for request, p in zip(requests, positions, strict=True):
            seq = request.parent
            assert seq is not None
            seq.prompt_len = int(request.prompt.ids.shape[0])
            before = int(seq.top[-1]) if seq.top.shape[0] else -1
            seq.ids = torch.cat([seq.ids, request.prompt.ids[request.reused :]])
            tops = torch.cummax(p.max(0).values.cpu(), 0).values.clamp(min=before)
            seq.top = torch.cat([seq.top, tops])
            prompt = request.prompt
            seq.images |= {
                (start, digest)
                for (start, _), digest in zip(prompt.spans, prompt.digests, strict=True)
                if start >= request.reused
            }
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

    def _decode(self) -> None:
        """One decode step for every running row. A row's fed tokens join its sequence's ids
        when it finishes (keys and values are written at once; only the ids wait)."""
        torch = self._torch
        started = time.perf_counter()
        rows = self._running
        # Each row writes its next token at position _filled: every slot must reach one past it.
        while not self._room(max(_filled(r.seq, r) for r in rows) + 1):
            # The store can hold no longer slots for these sequences: the longest answer among
            # those at the edge ends here, and its sequence may go.
            over = [r for r in rows if _filled(r.seq, r) + 1 > self.capacity]
            self._cut(max(over, key=lambda r: len(r.tokens)))
            rows = self._running
            if not rows:
                return
        self._compact(rows)
        rows = sorted(rows, key=lambda r: r.seq.slot)
        fed = [len(r.tokens) - 1 for r in rows]  # tokens already fed before this one
        # Each row's last token and its position, in one host-to-device copy.
        step = torch.tensor(
            [[r.tokens[-1], r.next_position + k] for r, k in zip(rows, fed, strict=True)]
        ).to(self.device)
        pos = step[:, 1].view(1, -1, 1).expand(3, -1, 1)
        slots = [r.seq.slot for r in rows]
        starts = [int(r.seq.ids.shape[0]) + k for r, k in zip(rows, fed, strict=True)]
        logits = self._forward(step[:, :1], pos, slots, starts, [1] * len(rows))
        chosen = self._choose_rows(logits, rows)
        self.rows_decoded += len(rows)
        self._account(started)
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


def _tail(request: _Request) -> int:
    """How many new tokens an admitted request runs."""
    return int(request.prompt.ids.shape[0]) - request.reused


def _similar(requests: list[_Request]) -> list[list[_Request]]:
    """Requests grouped so that a padded pass costs little more than their own passes would:
    what they run within twice each other's length (padding), and their whole prompts within
    1.5 times (every row of a pass attends over the longest row's keys: a new study's first
    turn padded beside another's long conversation paid for all of its keys)."""
    groups: list[list[_Request]] = []
    for request in sorted(requests, key=lambda r: int(r.prompt.ids.shape[0])):
        if groups:
            group = groups[-1]
            tails = [_tail(r) for r in (*group, request)]
            if max(tails) <= max(2 * min(tails), _DEFER_MIN_TOKENS) and 2 * int(
                request.prompt.ids.shape[0]
            ) <= 3 * int(group[0].prompt.ids.shape[0]):
                group.append(request)
                continue
        groups.append([request])
    return groups

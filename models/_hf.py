"""The transformers backend: Qwen2.5-VL-class models (CheXOne, the tiny checkpoint) in process.

Two ways to answer a conversation, which must give the same tokens (fp32, greedy):

* without prefix reuse: the stock ``model.generate`` on the whole conversation, every turn
  re-encoding every image and re-reading every earlier turn. This is the reference.
* with prefix reuse (default): the batching engine of :mod:`models._engine`. Every thread's
  conversations go to one engine that keeps each conversation's keys and values in a slot of one
  cache of many sequences, reuses the longest common *token* prefix (so a study's later turns
  run only their new tokens and its images are encoded once), and runs the new tokens of all
  requests in flight, and then their decode steps, as shared forward passes.

Reuse is cut at the common *token* prefix (not at the previous turn's text): an answer
re-tokenised in the next turn's template may split differently from the tokens the model
generated, and a turn cut by ``max_new_tokens`` has no ``<|im_end|>``; both simply end the
common prefix a little earlier.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from models._backend import Conversation, DecodeOptions, Generation, Message, ModelLoadError
from models._engine import KV_SETTING, Engine, Prompt, Result, Sampling
from models._images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, pixel_bounds
from models._parse import clean_output

log = logging.getLogger(__name__)

_IMAGE_PAD = "<|image_pad|>"
_TURN_START = "<|im_start|>"
_VISION = "<|vision_start|><|image_pad|><|vision_end|>"
# Prepared images whose pixels and vision features are kept: two a study, for many in flight.
_IMAGE_CACHE_SIZE = 256
_DEFAULT_KV_GIB = 4.0  # the engine's key/value store off a GPU, unless set


def _digest(image: Image.Image) -> str:
    """A content hash of an image (mode, size and pixels)."""
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(f"{image.mode}:{image.size}".encode())
    hasher.update(image.tobytes())
    return hasher.hexdigest()


def resolve_device(device: str) -> str:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` is bf16 on a GPU (CheXOne's own dtype) and fp32 on the CPU (bf16 is slow there)."""
    import torch

    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return names[dtype.lower()]
    except KeyError:
        raise ValueError(
            f"unknown model dtype {dtype!r}; use auto, float32, bfloat16 or float16"
        ) from None


# Every shape a reading's conversations take: a system prompt, a turn of several images and text
# (with the whitespace a template might trim), an answer, a question without images.
_CHATML_PROBE = Conversation(
    "Sys tem.",
    (
        Message("user", " Q1 \n", (Image.new("L", (1, 1)), Image.new("L", (1, 1)))),
        Message("assistant", "A {1}\n"),
        Message("user", "Q2"),
    ),
)


def _chatml(conversation: Conversation) -> str:
    """Qwen2.5-VL's chat template (ChatML, images first in a turn as vision placeholders, an
    assistant turn opened at the end), written directly."""
    parts = [f"{_TURN_START}system\n{conversation.system}<|im_end|>\n"]
    for turn in conversation.turns:
        images = _VISION * len(turn.images)
        parts.append(f"{_TURN_START}{turn.role}\n{images}{turn.text}<|im_end|>\n")
    parts.append(f"{_TURN_START}assistant\n")
    return "".join(parts)


class _PrefixTokens:
    """Token ids of rendered conversations, reusing the ids of the longest earlier text that
    this one extends, cut just after a turn start: every turn of a reading renders the whole
    dialogue again, and tokenising all of it again was most of a turn's work outside the model.

    Exact because ``<|im_start|>`` is an added token: the tokenizer splits text at added tokens
    before anything else, so the ids of a text up to and including one do not depend on what
    follows. The first text is also tokenised whole and compared (a tokenizer whose added token
    strips the whitespace after it would differ); on a difference every text is tokenised
    whole."""

    def __init__(self, tokenizer: Any, size: int = 1024) -> None:
        self._tokenizer = tokenizer
        self._known: OrderedDict[str, list[int]] = OrderedDict()
        self._size = size
        self._exact: bool | None = None  # None: not checked yet
        self.reused = 0  # ids taken from earlier texts, all told

    def _whole(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def ids(self, text: str) -> list[int]:
        last = text.rfind(_TURN_START)
        if self._exact is False or last < 0:
            return self._whole(text)
        cut = last + len(_TURN_START)
        start, known, at = 0, [], cut
        while at > 0:  # the longest known prefix that ends just after a turn start
            hit = self._known.get(text[:at])
            if hit is not None:
                start, known = at, hit
                self._known.move_to_end(text[:at])
                break
            at = text.rfind(_TURN_START, 0, at - len(_TURN_START)) + len(_TURN_START)
            if at < len(_TURN_START):
                break
        self.reused += len(known)
        head = known + self._whole(text[start:cut])
        ids = head + self._whole(text[cut:])
        if self._exact is None:
            self._exact = ids == self._whole(text)
            if not self._exact:
                log.warning(
                    "this tokenizer splits differently at %s: texts tokenised whole", _TURN_START
                )
                return self._whole(text)
        self._known[text[:cut]] = head
        while len(self._known) > self._size:
            self._known.popitem(last=False)
        return ids


@dataclass
class _ImageEntry:
    """One image as the model consumes it, kept so it is processed and encoded only once."""

    digest: str  # of the pixels: the image's identity in the prefix cache
    pixel_values: Any  # torch.Tensor (patches, patch_dim)
    grid_thw: Any  # torch.LongTensor (3,)
    n_tokens: int
    features: Any = None  # torch.Tensor (n_tokens, hidden) once encoded


@dataclass
class _Encoded:
    """A tokenised conversation with its images."""

    ids: Any  # torch.LongTensor (L,)
    images: list[_ImageEntry]
    starts: list[int]  # position of each image's first placeholder token in ids

    @property
    def spans(self) -> list[tuple[int, int]]:
        """(first, end) placeholder positions of each image."""
        return [(s, s + e.n_tokens) for s, e in zip(self.starts, self.images, strict=True)]

    @property
    def grid(self) -> Any:
        import torch

        if not self.images:
            return None
        return torch.stack([entry.grid_thw for entry in self.images])

    @property
    def pixel_values(self) -> Any:
        import torch

        if not self.images:
            return None
        return torch.cat([entry.pixel_values for entry in self.images])


class TransformersBackend:
    """A Qwen2.5-VL-class model loaded with ``from_pretrained``; see the module docstring.

    Thread-safe: concurrent calls are batched by the engine (the stock path takes turns).
    """

    # The Reader lets readings run at once: the engine batches their turns.
    concurrent_readings = True

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str,
        revision: str | None = None,
        prefix_cache: bool = True,
        kv_cache_bytes: int | None = None,
    ) -> None:

        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_id = model_id
        self.revision = revision
        self.prefix_cache = prefix_cache
        self.device = next(model.parameters()).device
        self.image_token_id = int(model.config.image_token_id)
        eos = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        self.eos_ids = [int(t) for t in eos if isinstance(t, int) and t >= 0]
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[-1]
        self._images: OrderedDict[str, _ImageEntry] = OrderedDict()
        self._digests: dict[int, tuple[weakref.ref[Image.Image], str]] = {}
        self._encode_lock = threading.Lock()  # the fast tokenizer and the image table
        self._vision_lock = threading.Lock()  # one image encoded at a time (_encode_images)
        self._seen_images: OrderedDict[str, None] = OrderedDict()  # digests, oldest first
        self._tokens = _PrefixTokens(self.tokenizer)
        # Written directly only where that is exactly what the checkpoint's template writes.
        try:
            self._chatml = self._templated(_CHATML_PROBE) == _chatml(_CHATML_PROBE)
        except Exception:  # no template, or one that cannot render the probe: it says so later
            self._chatml = False
        self._stock_lock = threading.Lock()  # model.generate keeps rope_deltas on the model
        self._input_embeddings = model.get_input_embeddings()  # looked up once: every turn
        self.engine = Engine(
            model, eos_ids=self.eos_ids, pad_id=self.pad_id, memory_bytes=kv_cache_bytes
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(  # noqa: PLR0913 (the generation knobs of one forward pass)
        cls,
        name_or_path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        local_files_only: bool = False,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        prefix_cache: bool = True,
        model_id: str | None = None,
        kv_cache_gib: float = 0.0,
    ) -> TransformersBackend:
        """``from_pretrained`` of the model and its processor, exactly as for CheXOne.

        Raises :class:`ModelLoadError` with a plain explanation when either cannot be loaded.
        """
        try:
            import torch  # noqa: F401
            from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
        except ImportError as error:
            raise ModelLoadError(
                f"the model stack is not installed ({error}); install RadDraft with the "
                "'model' extra: pip install 'raddraft[model]'"
            ) from error
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        source = str(name_or_path)
        try:
            hub: dict[str, Any] = {"local_files_only": local_files_only}
            if revision:
                hub["revision"] = revision
            model: Any = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                source, dtype=torch_dtype, **hub
            )
            processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                source, size=pixel_bounds(min_pixels, max_pixels), **hub
            )
        except Exception as error:  # any failure to load means the same thing to the caller
            raise ModelLoadError(
                f"could not load model {source!r}: {type(error).__name__}: {error}".strip()
            ) from error
        model.to(device)
        model.eval()
        found_revision = revision or getattr(model.config, "_commit_hash", None)
        return cls(
            model,
            processor,
            model_id=model_id or source,
            revision=found_revision,
            prefix_cache=prefix_cache,
            kv_cache_bytes=kv_cache_bytes(kv_cache_gib, device),
        )

    # ------------------------------------------------------------------ encoding
    def _digest(self, image: Image.Image) -> str:
        """The image's content hash, computed once per image object (every turn of a reading
        passes the same objects again)."""
        known = self._digests.get(id(image))
        if known is not None and known[0]() is image:
            return known[1]
        key = _digest(image)
        if len(self._digests) > 4 * _IMAGE_CACHE_SIZE:
            self._digests = {k: v for k, v in self._digests.items() if v[0]() is not None}
        self._digests[id(image)] = (weakref.ref(image), key)
        return key

    def _image_entry(self, image: Image.Image) -> _ImageEntry:
        """Pixels and grid of an image, through the checkpoint's own image processor, once."""
        key = self._digest(image)
        entry = self._images.get(key)
        if entry is not None:
            self._images.move_to_end(key)
            return entry
        out = self.processor.image_processor(images=[image], return_tensors="pt")
        grid = out["image_grid_thw"][0]
        merge = int(self.processor.image_processor.merge_size)
        entry = _ImageEntry(
            digest=key,
            pixel_values=out["pixel_values"],
            grid_thw=grid,
            n_tokens=int(grid.prod()) // (merge * merge),
        )
        self._images[key] = entry
        while len(self._images) > _IMAGE_CACHE_SIZE:
            self._images.popitem(last=False)
        return entry

    def render(self, conversation: Conversation) -> str:
        """The conversation as the chat template writes it, ready for the assistant's answer:
        written directly when the checkpoint's template is Qwen's ChatML (checked on a probe at
        load), else through the template. The template machinery took 2-3 ms a turn in the
        reading's own threads, which at many studies in flight hold the interpreter lock the
        engine thread needs."""
        if self._chatml:
            return _chatml(conversation)
        return self._templated(conversation)

    def _templated(self, conversation: Conversation) -> str:
        text = self.processor.apply_chat_template(
            conversation.to_hf_messages(), tokenize=False, add_generation_prompt=True
        )
        return str(text)

    def encode(self, conversation: Conversation) -> _Encoded:
        """Token ids (image placeholders expanded, as the processor does) and images."""
        with self._encode_lock:
            return self._encode(conversation)

    def _encode(self, conversation: Conversation) -> _Encoded:
        import torch

        entries = [self._image_entry(image) for image in conversation.images]
        text = self.render(conversation)
        if text.count(_IMAGE_PAD) != len(entries):
            raise ValueError(
                f"template placed {text.count(_IMAGE_PAD)} images, expected {len(entries)}"
            )
        # Tokenised with one placeholder per image, then each expanded to the image's token
        # count: the placeholder is an added token (text is split around it before BPE), so the
        # ids are those of the expanded text, without tokenising hundreds of placeholders a turn.
        ids = torch.tensor(self._tokens.ids(text), dtype=torch.long)
        pads = torch.nonzero(ids == self.image_token_id).flatten()
        counts = torch.ones_like(ids)
        counts[pads] = torch.tensor([e.n_tokens for e in entries], dtype=torch.long)
        ids = torch.repeat_interleave(ids, counts)
        ends = torch.cumsum(counts, 0)
        starts = [int(ends[p]) - e.n_tokens for p, e in zip(pads.tolist(), entries, strict=True)]
        return _Encoded(ids=ids, images=entries, starts=starts)

    def _tail_positions(self, encoded: _Encoded, start: int, offset: int) -> Any:
        """3D positions (3, L - start) of tokens ``start:``, as a full run would give them.

        Qwen2.5-VL starts every segment (a text run, an image) at the largest position so far
        plus one, so the tail's positions are the model's own rule applied to the tail alone,
        shifted by ``offset`` (the kept prefix's largest position plus one).
        """
        import torch

        ids = encoded.ids[start:][None].to(self.device)
        grids = [
            e.grid_thw for s, e in zip(encoded.starts, encoded.images, strict=True) if s >= start
        ]
        if not grids:
            positions = torch.arange(ids.shape[1], device=self.device).view(1, -1).expand(3, -1)
            return positions + offset
        mm = (ids == self.image_token_id).to(torch.int)
        positions, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=mm, image_grid_thw=torch.stack(grids).to(self.device)
        )
        return positions[:, 0] + offset

    def _rope_positions(self, encoded: _Encoded) -> Any:
        """3D positions (3, 1, L) of the whole sequence, from the model's own rule."""
        import torch

        ids = encoded.ids[None].to(self.device)
        if not encoded.images:
            return torch.arange(ids.shape[1], device=self.device).view(1, 1, -1).expand(3, 1, -1)
        mm = (ids == self.image_token_id).to(torch.int)
        positions, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=mm, image_grid_thw=encoded.grid.to(self.device)
        )
        return positions

    def _features(self, entry: _ImageEntry) -> Any:
        """Vision-encoder output for one image (computed once, then kept with the entry)."""
        if entry.features is None:
            out = self.model.model.get_image_features(
                entry.pixel_values.to(self.device), entry.grid_thw[None].to(self.device)
            )
            entry.features = out.pooler_output[0]
        return entry.features

    def _encode_images(self, encoded: list[_Encoded]) -> None:
        """Run the vision encoder on images seen for the first time here, in the reading's own
        thread, before the engine sees them: in the engine's thread the encoder stalled every
        study's decoding for each new image (a tenth of its time at eight studies in flight on
        the tiny model). One image at a time, so that many readings starting at once do not
        hold many encoders' activations beside the key/value store. An image seen before whose
        features were since evicted is left to the engine, which encodes it only when its
        prefix is not kept (a later turn of its study never needs it)."""
        import torch

        with self._vision_lock, torch.inference_mode():
            for entry in {id(e): e for enc in encoded for e in enc.images}.values():
                if entry.digest in self._seen_images:
                    continue
                self._seen_images[entry.digest] = None
                while len(self._seen_images) > 4 * _IMAGE_CACHE_SIZE:
                    self._seen_images.popitem(last=False)
                self._features(entry)

    def _embed_tail(self, encoded: _Encoded, start: int) -> Any:
        """Input embeddings of tokens ``start:`` with image features scattered in. Each image's
        placeholders are one run from its start (:meth:`_encode`), so the tail's are sliced,
        not searched for: this runs on the engine's thread at every turn."""
        embeds = self._input_embeddings(encoded.ids[start:].to(self.device))
        for first, entry in zip(encoded.starts, encoded.images, strict=True):
            end = first + entry.n_tokens
            if end <= start:
                continue  # this image is entirely in the cached prefix: no need to encode it
            skip = max(start - first, 0)  # placeholders already in the cached prefix
            embeds[first + skip - start : end - start] = self._features(entry)[skip:].to(
                embeds.dtype
            )
        return embeds

    # ------------------------------------------------------------------ generation
    def generate(self, conversation: Conversation, options: DecodeOptions) -> Generation:
        """Answer the conversation's last user turn (see the module docstring for the two paths)."""
        return self.generate_batch([conversation], options)[0]

    def generate_batch(
        self, conversations: list[Conversation], options: DecodeOptions
    ) -> list[Generation]:
        """Answer independent conversations at once (branches of one prefix are the common
        case: the engine runs the shared prefix once and copies it to the others)."""
        import torch

        if not conversations:
            return []
        started = time.perf_counter()
        encoded = [self.encode(c) for c in conversations]
        longest = max(int(e.ids.shape[0]) for e in encoded)
        options = self._fit_context(longest, options)
        if not self.prefix_cache:
            with self._stock_lock, torch.inference_mode():
                return [self._generate_stock(e, options) for e in encoded]
        self._encode_images(encoded)
        results = self.engine.submit_many([self._prompt(e) for e in encoded], _sampling(options))
        return [self._generation(r, started) for r in results]

    def prompt_logits(self, conversation: Conversation, *, keep: bool = False) -> tuple[Any, int]:
        """The next-token logits (fp32, host) of ``conversation`` through the engine's prefix
        cache, and the prompt tokens reused. ``keep``: keep its keys and values for later
        conversations (else the cache is left as it was). For checks and benchmarks."""
        encoded = self.encode(conversation)
        self._encode_images([encoded])
        result = self.engine.submit(
            self._prompt(encoded),
            Sampling(max_new_tokens=1),
            keep=keep,
            logits=True,
        )
        return result.logits, result.cached_tokens

    def _prompt(self, encoded: _Encoded) -> Prompt:
        """What the engine needs of an encoded conversation."""
        return Prompt(
            ids=encoded.ids,
            spans=encoded.spans,
            digests=[e.digest for e in encoded.images],
            embed=lambda start: self._embed_tail(encoded, start),
            positions=lambda start, offset: self._tail_positions(encoded, start, offset),
        )

    def _generation(self, result: Result, started: float) -> Generation:
        tokens = result.tokens
        return Generation(
            texts=[self._decode(row) for row in tokens],
            prompt_tokens=result.prompt_tokens,
            completion_tokens=[len(row) for row in tokens],
            cached_tokens=result.cached_tokens,
            prefill_seconds=result.queued_seconds + result.prefill_seconds,
            decode_seconds=result.decode_seconds,
            total_seconds=time.perf_counter() - started,
            finish_reasons=[
                "stop" if row and row[-1] in self.eos_ids else "length" for row in tokens
            ],
            token_ids=tokens,
        )

    def _fit_context(self, prompt_tokens: int, options: DecodeOptions) -> DecodeOptions:
        """Shorten ``max_new_tokens`` so prompt plus answer fit the model's context."""
        import dataclasses

        text_config = getattr(self.model.config, "text_config", self.model.config)
        limit = int(getattr(text_config, "max_position_embeddings", 32768))
        what = f"the context ({limit})"
        store = self.engine.max_tokens if self.prefix_cache else None
        if store is not None and store < limit:
            # Worded as the context is: the worker fails such a conversation once, for good.
            limit = store
            what = f"the context the key/value store can hold ({store}; {KV_SETTING})"
        room = limit - prompt_tokens
        if room <= 0:
            raise ValueError(f"conversation of {prompt_tokens} tokens exceeds {what}")
        if options.max_new_tokens > room:
            log.warning(
                "max_new_tokens cut from %d to %d to fit the context", options.max_new_tokens, room
            )
            return dataclasses.replace(options, max_new_tokens=room)
        return options

    def release(self, images: list[Image.Image]) -> None:
        """A reading of these images is over: the engine may drop the keys and values of
        every conversation holding one of them (the images' own encoding stays cached)."""
        with self._encode_lock:
            digests = frozenset(self._digest(image) for image in images)
        self.engine.forget(digests)

    def reset_cache(self) -> None:
        """Forget the prefix cache (the next call runs its whole prompt). Only while idle."""
        self.engine.reset()

    def _generation_config(self, options: DecodeOptions) -> Any:
        """An explicit config, so the checkpoint's own defaults (a repetition penalty, top_k) do
        not silently turn greedy decoding into something else."""
        from transformers import GenerationConfig

        return GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=options.do_sample,
            temperature=options.temperature if options.do_sample else None,
            top_p=options.top_p if options.do_sample else None,
            top_k=None,
            repetition_penalty=1.0,
            num_return_sequences=options.n if options.do_sample else 1,
            max_new_tokens=options.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )

    def _generate_stock(self, encoded: _Encoded, options: DecodeOptions) -> Generation:
        """The reference path: ``model.generate`` on the whole conversation, nothing reused."""
        import torch

        started = time.perf_counter()
        if options.seed is not None:
            torch.manual_seed(options.seed)
        ids = encoded.ids[None].to(self.device)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if encoded.images:
            kwargs["pixel_values"] = encoded.pixel_values.to(self.device)
            kwargs["image_grid_thw"] = encoded.grid.to(self.device)
            kwargs["mm_token_type_ids"] = (ids == self.image_token_id).to(torch.int)
        self.model.model.rope_deltas = None  # never let one call's 3D positions leak into the next
        out = self.model.generate(**kwargs, generation_config=self._generation_config(options))
        new = out[:, ids.shape[1] :].tolist()
        texts, counts, reasons = [], [], []
        for row in new:
            tokens = self._trim(row)
            texts.append(self._decode(tokens))
            counts.append(len(tokens))
            reasons.append("stop" if tokens and tokens[-1] in self.eos_ids else "length")
        total = time.perf_counter() - started
        return Generation(
            texts=texts,
            prompt_tokens=int(ids.shape[1]),
            completion_tokens=counts,
            cached_tokens=0,
            total_seconds=total,
            finish_reasons=reasons,
            token_ids=[self._trim(row) for row in new],
        )

    def _trim(self, tokens: list[int]) -> list[int]:
        """Generated tokens up to and including the first end-of-turn token (drops padding)."""
        for index, token in enumerate(tokens):
            if token in self.eos_ids:
                return tokens[: index + 1]
        return tokens

    def _decode(self, tokens: list[int]) -> str:
        """Text of generated tokens. Special tokens are decoded and then only the chat/vision
        control tokens removed, so grounding markup survives whatever the tokenizer calls it."""
        return clean_output(self.tokenizer.decode(tokens, skip_special_tokens=False))


def kv_cache_bytes(gib: float, device: str) -> int:
    """The engine's key/value budget: ``gib`` when set; else, on a GPU, 80% of the memory free
    once the model is loaded (the rest for activations and the vision encoder), and
    ``_DEFAULT_KV_GIB`` elsewhere (a CPU's memory is shared with everything else)."""
    if gib > 0:
        return int(gib * 2**30)
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(0.8 * free)
    return int(_DEFAULT_KV_GIB * 2**30)


def _sampling(options: DecodeOptions) -> Sampling:
    return Sampling(
        max_new_tokens=options.max_new_tokens,
        rows=options.n if options.do_sample else 1,
        do_sample=options.do_sample,
        temperature=options.temperature,
        top_p=options.top_p,
        seed=options.seed,
    )

"""The transformers backend: Qwen2.5-VL-class models (CheXOne, the tiny checkpoint) in process.

Two ways to answer a conversation, which must give the same tokens (fp32, greedy):

* without prefix reuse: the stock ``model.generate`` on the whole conversation, every turn
  re-encoding every image and re-reading every earlier turn. This is the reference.
* with prefix reuse (default): one ``DynamicCache`` kept across calls. A new conversation is
  tokenised in full, compared token by token with what the cache holds, the cache is cropped to
  the longest common prefix and only the remainder is run. Image features are computed once per
  image and scattered into the remainder's embeddings; positions are Qwen2.5-VL's 3D (mrope)
  positions computed by the model's own ``get_rope_index`` over the *whole* sequence and sliced,
  so cached and fresh tokens sit exactly where a full run would put them. Decoding then continues
  the way ``generate`` does (next position = max position + 1 + step).

Cropping to the common *token* prefix (not to the previous turn's text) is what keeps reuse exact:
an answer re-tokenised in the next turn's template may split differently from the tokens the
model generated, and a turn cut by ``max_new_tokens`` has no ``<|im_end|>``; both simply end the
common prefix a little earlier.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from models._backend import Conversation, DecodeOptions, Generation, ModelLoadError
from models._images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from models._parse import clean_output

log = logging.getLogger(__name__)

_IMAGE_PAD = "<|image_pad|>"
_IMAGE_CACHE_SIZE = 16  # prepared images whose pixels and vision features are kept


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
    """A Qwen2.5-VL-class model loaded with ``from_pretrained``; see the module docstring."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str,
        revision: str | None = None,
        prefix_cache: bool = True,
    ) -> None:
        import torch

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
        self._cache: Any = None
        self._cached_ids = torch.zeros(0, dtype=torch.long)
        # (start, digest) of each image in the cached sequence. Placeholder tokens are the same
        # for every image, so the token ids alone cannot tell two studies' images apart.
        self._cached_images: set[tuple[int, str]] = set()

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
            processor = AutoProcessor.from_pretrained(
                source, min_pixels=min_pixels, max_pixels=max_pixels, **hub
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
        )

    # ------------------------------------------------------------------ encoding
    def _image_entry(self, image: Image.Image) -> _ImageEntry:
        """Pixels and grid of an image, through the checkpoint's own image processor, once."""
        key = _digest(image)
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
        """The conversation as the chat template writes it, ready for the assistant's answer."""
        text = self.processor.apply_chat_template(
            conversation.to_hf_messages(), tokenize=False, add_generation_prompt=True
        )
        return str(text)

    def encode(self, conversation: Conversation) -> _Encoded:
        """Token ids (image placeholders expanded, as the processor does) and images."""
        import torch

        entries = [self._image_entry(image) for image in conversation.images]
        pieces = self.render(conversation).split(_IMAGE_PAD)
        if len(pieces) != len(entries) + 1:
            raise ValueError(f"template placed {len(pieces) - 1} images, expected {len(entries)}")
        text = pieces[0]
        for entry, piece in zip(entries, pieces[1:], strict=True):
            text += _IMAGE_PAD * entry.n_tokens + piece
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        ids = ids.to(torch.long)
        positions = torch.nonzero(ids == self.image_token_id).flatten().tolist()
        starts, offset = [], 0
        for entry in entries:
            starts.append(int(positions[offset]))
            offset += entry.n_tokens
        return _Encoded(ids=ids, images=entries, starts=starts)

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

    def _embed_tail(self, encoded: _Encoded, start: int) -> Any:
        """Input embeddings of tokens ``start:`` with image features scattered in."""
        import torch

        ids = encoded.ids.to(self.device)
        embeds = self.model.get_input_embeddings()(ids[start:])
        image_positions = torch.nonzero(ids == self.image_token_id).flatten()
        offset = 0
        for entry in encoded.images:
            span = image_positions[offset : offset + entry.n_tokens]
            offset += entry.n_tokens
            if int(span[-1]) < start:
                continue  # this image is entirely in the cached prefix: no need to encode it
            features = self._features(entry).to(embeds.dtype)
            keep = span >= start
            embeds[span[keep] - start] = features[keep]
        return embeds

    # ------------------------------------------------------------------ generation
    def generate(self, conversation: Conversation, options: DecodeOptions) -> Generation:
        """Answer the conversation's last user turn (see the module docstring for the two paths)."""
        import torch

        with torch.inference_mode():
            encoded = self.encode(conversation)
            options = self._fit_context(int(encoded.ids.shape[0]), options)
            if self.prefix_cache:
                return self._generate_cached(encoded, options)
            return self._generate_stock(encoded, options)

    def generate_batch(
        self, conversations: list[Conversation], options: DecodeOptions
    ) -> list[Generation]:
        """Answer independent conversations that share a prefix (branches).

        With prefix reuse the shared prefix is run once and the branches are decoded together as
        one batch; without it, each conversation is answered on its own.
        """
        import torch

        if not conversations:
            return []
        with torch.inference_mode():
            encoded = [self.encode(c) for c in conversations]
            batchable = (
                self.prefix_cache
                and len(encoded) > 1
                and not options.do_sample
                and self._branch_point(encoded) is not None
            )
            if not batchable:
                return [
                    self._generate_cached(e, options)
                    if self.prefix_cache
                    else self._generate_stock(e, options)
                    for e in encoded
                ]
            return self._generate_branches(encoded, options)

    def _fit_context(self, prompt_tokens: int, options: DecodeOptions) -> DecodeOptions:
        """Shorten ``max_new_tokens`` so prompt plus answer fit the model's context."""
        import dataclasses

        text_config = getattr(self.model.config, "text_config", self.model.config)
        limit = int(getattr(text_config, "max_position_embeddings", 32768))
        room = limit - prompt_tokens
        if room <= 0:
            raise ValueError(
                f"conversation of {prompt_tokens} tokens exceeds the context ({limit})"
            )
        if options.max_new_tokens > room:
            log.warning(
                "max_new_tokens cut from %d to %d to fit the context", options.max_new_tokens, room
            )
            return dataclasses.replace(options, max_new_tokens=room)
        return options

    def reset_cache(self) -> None:
        """Forget the prefix cache (the next call runs its whole prompt)."""
        import torch

        self._cache = None
        self._cached_ids = torch.zeros(0, dtype=torch.long)
        self._cached_images = set()

    def _generation_config(self, options: DecodeOptions) -> Any:
        """An explicit config, so the checkpoint's own defaults (a repetition penalty, top_k) do
        not silently turn greedy decoding into something else."""
        from transformers import GenerationConfig

        return GenerationConfig(
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

    def _prefill(self, encoded: _Encoded, positions: Any) -> tuple[Any, int]:
        """Make the cache hold ``encoded``'s prompt; return the last logits and reused count."""
        import torch
        from transformers import DynamicCache

        ids = encoded.ids
        length = int(ids.shape[0])
        cached = self._cached_ids
        limit = min(int(cached.shape[0]), length - 1)  # at least one token must be run for logits
        same = (cached[:limit] == ids[:limit]).to(torch.int)
        reuse = int(same.cumprod(0).sum()) if limit > 0 else 0
        for start, entry in zip(encoded.starts, encoded.images, strict=True):
            if start < reuse and (start, entry.digest) not in self._cached_images:
                reuse = start  # same placeholders, different pixels: reuse stops there
                break
        if self._cache is None or reuse == 0:
            self._cache = DynamicCache(config=self.model.config)
            reuse = 0
        elif self._cache.get_seq_length() > reuse:
            self._cache.crop(reuse - self._cache.get_seq_length())
        embeds = self._embed_tail(encoded, reuse)
        out = self.model(
            inputs_embeds=embeds[None],
            position_ids=positions[:, :, reuse:],
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._cached_ids = ids.clone()
        self._cached_images = {
            (s, e.digest) for s, e in zip(encoded.starts, encoded.images, strict=True)
        }
        return out.logits[:, -1, :], reuse

    def _choose(self, logits: Any, options: DecodeOptions, generator: Any) -> Any:
        """Next token per row: argmax, or a sample at ``temperature`` within ``top_p``."""
        import torch

        if not options.do_sample:
            return torch.argmax(logits, dim=-1)
        probs = torch.softmax(logits.float() / max(options.temperature, 1e-5), dim=-1)
        if options.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
            drop = sorted_probs.cumsum(-1) - sorted_probs > options.top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).flatten()

    def _decode_loop(
        self, logits: Any, cache: Any, next_position: Any, options: DecodeOptions, mask: Any = None
    ) -> list[list[int]]:
        """Greedy or sampled decoding of every row from ``logits`` onwards, in place on ``cache``.

        ``next_position`` is a (rows,) tensor: where each row's first new token sits. Rows that
        finish keep being fed padding (ignored) until all finish; ``mask`` (rows, cached length)
        is the attention mask for batched branches, None for a single row.
        """
        import torch

        rows = int(logits.shape[0])
        generator = None
        if options.do_sample:
            generator = torch.Generator(device=logits.device)
            generator.manual_seed(options.seed if options.seed is not None else 0)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        for step in range(options.max_new_tokens):
            chosen = self._choose(logits, options, generator)
            for row in range(rows):
                if not done[row]:
                    token = int(chosen[row])
                    tokens[row].append(token)
                    done[row] = token in self.eos_ids
            if all(done) or step == options.max_new_tokens - 1:
                break
            # A finished row is fed padding; what it computes afterwards is never read.
            feed = torch.tensor(
                [[self.pad_id if done[r] else int(chosen[r])] for r in range(rows)],
                device=self.device,
            )
            position = (next_position + step).view(1, rows, 1).expand(3, rows, 1)
            kwargs: dict[str, Any] = {}
            if mask is not None:
                mask = torch.cat(
                    [mask, torch.ones(rows, 1, dtype=mask.dtype, device=mask.device)], dim=1
                )
                kwargs["attention_mask"] = mask
            out = self.model(
                input_ids=feed,
                position_ids=position,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
            logits = out.logits[:, -1, :]
        return tokens

    def _generate_cached(self, encoded: _Encoded, options: DecodeOptions) -> Generation:
        """The prefix-reuse path (see the module docstring)."""
        import torch

        started = time.perf_counter()
        positions = self._rope_positions(encoded)
        logits, reused = self._prefill(encoded, positions)
        prefilled = time.perf_counter()
        next_position = positions.max() + 1
        rows = options.n if options.do_sample else 1
        if rows == 1 and not options.do_sample:
            tokens = self._decode_loop(logits, self._cache, next_position.view(1), options)
            # Everything but the last token went through the model and is in the cache now.
            fed = torch.tensor(tokens[0][:-1], dtype=torch.long)
            self._cached_ids = torch.cat([encoded.ids, fed])
        else:
            # Samples decode as a batch on a copy, so the shared cache stays at the prompt.
            branch = copy.deepcopy(self._cache)
            branch.batch_repeat_interleave(rows)
            tokens = self._decode_loop(
                logits.expand(rows, -1), branch, next_position.view(1).expand(rows), options
            )
        finished = time.perf_counter()
        return Generation(
            texts=[self._decode(row) for row in tokens],
            prompt_tokens=int(encoded.ids.shape[0]),
            completion_tokens=[len(row) for row in tokens],
            cached_tokens=reused,
            prefill_seconds=prefilled - started,
            decode_seconds=finished - prefilled,
            total_seconds=finished - started,
            finish_reasons=[
                "stop" if row and row[-1] in self.eos_ids else "length" for row in tokens
            ],
            token_ids=tokens,
        )

    def _branch_point(self, encoded: list[_Encoded]) -> int | None:
        """Length of the prefix all branches share, when their tails are text only."""
        import torch

        first = encoded[0].ids
        shortest = min(int(e.ids.shape[0]) for e in encoded)
        same = torch.ones(shortest - 1, dtype=torch.int)
        for other in encoded[1:]:
            same &= (other.ids[: shortest - 1] == first[: shortest - 1]).to(torch.int)
        point = int(same.cumprod(0).sum())
        for e in encoded:
            digests = [i.digest for i in e.images]
            if bool((e.ids[point:] == self.image_token_id).any()) or digests != [
                i.digest for i in encoded[0].images
            ]:
                return None
        return point if point > 0 else None

    def _generate_branches(
        self, encoded: list[_Encoded], options: DecodeOptions
    ) -> list[Generation]:
        """Run the shared prefix once, then all tails as one padded batch, then decode together.

        Padding goes between the prefix and each tail (masked out), so every row's last prompt
        token is in the last column and the rows' 3D positions are exactly their own full-run ones.
        """
        import torch

        started = time.perf_counter()
        point = self._branch_point(encoded)
        assert point is not None
        # Run the prefix (plus nothing): _prefill needs one token to run, so extend by the first
        # token of the first tail and then crop it off again.
        head = _Encoded(encoded[0].ids[: point + 1].clone(), encoded[0].images, encoded[0].starts)
        _, reused = self._prefill(head, self._rope_positions(head))
        self._cache.crop(-1)
        self._cached_ids = head.ids[:point]
        rows = len(encoded)
        tails = [e.ids[point:] for e in encoded]
        width = max(int(t.shape[0]) for t in tails)
        feed = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(rows, point + width, dtype=torch.long)
        mask[:, :point] = 1
        positions = torch.zeros(3, rows, width, dtype=torch.long, device=self.device)
        next_position = torch.zeros(rows, dtype=torch.long, device=self.device)
        for row, (enc, tail) in enumerate(zip(encoded, tails, strict=True)):
            n = int(tail.shape[0])
            feed[row, width - n :] = tail
            mask[row, point + width - n :] = 1
            full = self._rope_positions(enc)
            positions[:, row, width - n :] = full[:, 0, point:]
            next_position[row] = full.max() + 1
        branch = copy.deepcopy(self._cache)
        branch.batch_repeat_interleave(rows)
        mask = mask.to(self.device)
        out = self.model(
            input_ids=feed.to(self.device),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=branch,
            use_cache=True,
            logits_to_keep=1,
        )
        prefilled = time.perf_counter()
        tokens = self._decode_loop(out.logits[:, -1, :], branch, next_position, options, mask=mask)
        finished = time.perf_counter()
        share = 1.0 / rows  # the batch's time, shared equally between its rows
        return [
            Generation(
                texts=[self._decode(row)],
                prompt_tokens=int(enc.ids.shape[0]),
                completion_tokens=[len(row)],
                cached_tokens=point if i else reused,
                prefill_seconds=(prefilled - started) * share,
                decode_seconds=(finished - prefilled) * share,
                total_seconds=(finished - started) * share,
                finish_reasons=["stop" if row and row[-1] in self.eos_ids else "length"],
                token_ids=[row],
            )
            for i, (enc, row) in enumerate(zip(encoded, tokens, strict=True))
        ]

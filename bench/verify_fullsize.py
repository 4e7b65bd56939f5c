"""Check the prefix-cached generation against stock ``generate`` at CheXOne's full size.

    python bench/verify_fullsize.py [--dtypes bf16,fp32] [--max-new-tokens 6] [--branches]

The tiny checkpoint proves the transformers backend's prefix KV cache exact only on a 2-layer
fp32 model. This builds a random-weight model with Qwen2.5-VL-3B's exact architecture and
config (CheXOne is a full fine-tune of it: same shapes, bf16, about 3.75 B parameters), saves
it, loads it through the very ``from_pretrained`` path CheXOne takes
(:meth:`models._hf.TransformersBackend.load`), and compares token ids, greedy:

* turn 1: a real-size chest image (a 2500x2048 16-bit DX from ``tests/dicom_factory.py``,
  prepared to ``max_pixels`` 262144 as for CheXOne) and the findings prompt, cold cache;
* turn 2: that conversation with its answer and a second question: the cached path runs only
  the new tokens on top of the kept keys/values, the stock path runs everything again;
* with ``--branches``: two single-turn prompts over the same image as one batch of branches;
* with ``--logits-only`` (no generation, so fp32 fits in minutes on a CPU): turn 2's next-token
  logits from the cache against one full pass, and with ``--noise-floor`` what the dtype moves
  on its own: a batch of two against one, one decode step on a KV cache (how ``generate``
  makes every token after the first) against a full pass, and transformers' own forward run in
  the cache's two chunks against both.

On a random network rounding differences grow from layer to layer (the fp32 difference is
about 1e-3 of the logits' spread, bf16's 65000 times coarser steps grow to the spread itself),
so in bf16 the comparisons to read are the cache against transformers' own forward in the same
two chunks (0.0000 at full size, 2026-12-02) and the cache's difference against KV caching's own.

The weights are redrawn N(0, 1/fan_in) rather than Qwen's N(0, 0.02): at 0.02 a 36-layer random
model with tied embeddings only echoes its input token, which would make any comparison pass.
Token ids of the tokenizer's special tokens are Qwen's (151643...), filler entries pad the
small trained vocabulary up to them, so the config's token ids are Qwen's too.

Not in CI: it needs ~8 GB of memory (bf16; fp32 ~16 GB) and minutes of CPU. A dtype that does
not fit in the memory available is skipped and says so. The last line is
``RESULT identical=<yes|no> dtypes=<...> ...``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Qwen2.5-VL-3B-Instruct's config.json (Hugging Face, Qwen/Qwen2.5-VL-3B-Instruct); the fields
# transformers' Qwen2_5_VLConfig defaults differ on (those default to the 72B shapes) are set.
QWEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 1000000.0,
        "mrope_section": [16, 24, 24],
    },
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "tie_word_embeddings": True,
}
VISION_CONFIG: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "hidden_act": "silu",
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "out_hidden_size": 2048,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "initializer_range": 0.02,
}
MAX_PIXELS = 262144  # 512*512, CheXOne's training and evaluation setting
FINDINGS = "Write an example findings section for the CXR."
SECOND = "Write an example impression section for the CXR"


def available_gb() -> float:
    """MemAvailable from /proc/meminfo (Linux), in GB; infinity where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def qwen_tokenizer(tiny: Path, target: Path) -> None:
    """The tiny checkpoint's processor files with the tokenizer's ids moved to Qwen's: filler
    vocabulary entries (never produced by a merge) fill the ids up to 151643."""
    from tokenizers import pre_tokenizers

    data = json.loads((tiny / "tokenizer.json").read_text())
    vocab: dict[str, int] = data["model"]["vocab"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    used = set(vocab)
    next_id, a = len(vocab), 0
    while next_id < QWEN_IDS["<|endoftext|>"]:
        word = (
            alphabet[a % 256]
            + alphabet[(a // 256) % 256]
            + alphabet[(a // 65536) % 256]
            + "\u0100\u0100"
        )
        a += 1
        if word not in used:
            vocab[word] = next_id
            next_id += 1
    extra = max(QWEN_IDS.values()) + 1
    for token in data["added_tokens"]:
        if token["content"] in QWEN_IDS:
            token["id"] = QWEN_IDS[token["content"]]
        else:  # the grounding markup, after Qwen's control tokens
            token["id"] = extra
            extra += 1
    for name in os.listdir(tiny):
        if name.endswith((".json", ".jinja")) and name not in (
            "config.json",
            "generation_config.json",
        ):
            (target / name).write_bytes((tiny / name).read_bytes())
    (target / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    (target / "raddraft-tiny.json").unlink(missing_ok=True)  # not the demo checkpoint


def build(target: Path, seed: int) -> int:
    """Build, redraw and save the full-size random model in bf16; returns its parameter count."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=TEXT_CONFIG,
        vision_config=VISION_CONFIG,
        image_token_id=QWEN_IDS["<|image_pad|>"],
        video_token_id=QWEN_IDS["<|video_pad|>"],
        vision_start_token_id=QWEN_IDS["<|vision_start|>"],
        vision_end_token_id=QWEN_IDS["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    # The weights are all drawn below: Qwen's own init would be wasted time.
    from transformers.initialization import no_init_weights

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with no_init_weights():
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.tie_weights()  # the 3B ties lm_head to the input embeddings
    generator = torch.Generator().manual_seed(seed)
    embeddings = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is embeddings, "lm_head not tied"
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param is embeddings:
                # Qwen's 0.02: the layers, not the echo of the input token, decide the logits.
                param.normal_(0.0, 0.02, generator=generator)
            elif param.dim() >= 2:
                scale = param[0].numel() ** -0.5
                if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
                    # Sharper attention, so each position's answer depends on its context
                    # rather than on its own token alone (a random model's usual echo).
                    scale *= 3.0
                param.normal_(0.0, scale, generator=generator)
            elif "norm" in name:
                param.fill_(1.0)
            else:  # biases: small, so they matter without swamping the products
                param.normal_(0.0, 0.02, generator=generator)
        # Buffers (rotary inverse frequencies) are left to the model: from_pretrained
        # recomputes them anyway, and so does construction.
    model.generation_config = GenerationConfig(
        eos_token_id=[QWEN_IDS["<|im_end|>"], QWEN_IDS["<|endoftext|>"]],
        pad_token_id=QWEN_IDS["<|endoftext|>"],
        do_sample=False,
    )
    count = sum(p.numel() for p in model.parameters())
    model.save_pretrained(target, safe_serialization=True)
    del model
    gc.collect()
    return count


def chest_image() -> Any:
    """A 2500x2048 16-bit DX, prepared exactly as RadDraft prepares a study image."""
    from models import prepare_image
    from tests.dicom_factory import make_cxr

    ds = make_cxr(rows=2500, cols=2048, bits_stored=16, seed=7)
    image, geometry = prepare_image(ds, max_pixels=MAX_PIXELS)
    return image, geometry


def full_pass(backend: Any, encoded: Any, ids: Any = None) -> Any:
    """The last position's logits (fp32, one row) of one full forward pass as ``generate``
    runs its first step: token ids, pixels and grid, the model's own positions. ``ids`` (1, L)
    defaults to ``encoded``'s; a longer row extends it past the images."""
    import torch

    if ids is None:
        ids = encoded.ids[None].to(backend.device)
    backend.model.model.rope_deltas = None
    logits = backend.model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=encoded.pixel_values.to(backend.device),
        image_grid_thw=encoded.grid.to(backend.device),
        mm_token_type_ids=(ids == backend.image_token_id).to(torch.int),
        logits_to_keep=1,
    ).logits
    return logits[0, -1].float()


def cache_logits(backend: Any, conversation: Any) -> tuple[Any, int]:
    """The backend's prefix-cached next-token logits (fp32, one row) and tokens reused,
    through its engine; the engine's kept sequences stay as they were."""
    logits, reused = backend.prompt_logits(conversation)
    return logits.to(backend.device).float(), reused


def next_token_logits(backend: Any, conversation: Any) -> dict[str, Any]:
    """The next-token logits of ``conversation`` from the cache (kept prefix plus the new
    tokens) and from one full forward pass as ``generate`` runs it: how far apart they are,
    whatever a random model's greedy tokens happen to be."""
    import torch

    with torch.inference_mode():
        encoded = backend.encode(conversation)
        cached, reused = cache_logits(backend, conversation)
        full = full_pass(backend, encoded)
        top = torch.topk(full, 2).values
    return {
        "logits_max_abs_diff": float((cached - full).abs().max()),
        "logits_scale": float(full.std()),
        "top2_gap": float(top[0] - top[1]),
        "same_argmax": int(cached.argmax()) == int(full.argmax()),
        "reused_for_logits": reused,
    }


def noise_floor(backend: Any, conversation: Any) -> float:
    """Max |difference| between the next-token logits of one full pass and of the same pass
    in a batch of two identical rows: what the dtype's rounding alone moves (other matmul
    shapes, other summation order), to read the cache's difference against."""
    import torch

    with torch.inference_mode():
        encoded = backend.encode(conversation)
        one = full_pass(backend, encoded)
        two_ids = encoded.ids[None].to(backend.device).expand(2, -1).contiguous()
        backend.model.model.rope_deltas = None
        two = backend.model(
            input_ids=two_ids,
            attention_mask=torch.ones_like(two_ids),
            mm_token_type_ids=(two_ids == backend.image_token_id).to(torch.int),
            pixel_values=torch.cat([encoded.pixel_values.to(backend.device)] * 2),
            image_grid_thw=torch.cat([encoded.grid.to(backend.device)] * 2),
            logits_to_keep=1,
        ).logits[1, -1, :]
    return float((one - two.float()).abs().max())


def decode_step_floor(backend: Any, conversation: Any) -> float:
    """What KV caching itself moves in this dtype: the logits after one decode step on a cache
    (as ``generate`` makes every token after the first) against one full pass over the prompt
    plus that token. Max |difference|."""
    import torch
    from transformers import DynamicCache

    model = backend.model
    with torch.inference_mode():
        encoded = backend.encode(conversation)
        ids = encoded.ids[None].to(backend.device)
        positions = backend._rope_positions(encoded)
        cache = DynamicCache(config=model.config)
        embeds = backend._embed_tail(encoded, 0)
        out = model(
            inputs_embeds=embeds[None],
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        token = out.logits[0, -1].argmax().view(1, 1)
        step = model(
            input_ids=token,
            position_ids=(positions.max() + 1).view(1, 1, 1).expand(3, 1, 1),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[0, -1]
        full = full_pass(backend, encoded, torch.cat([ids, token], dim=1))
    return float((step.float() - full.float()).abs().max())


def chunked_reference(backend: Any, first: Any, second: Any) -> dict[str, float]:
    """Turn 2's next-token logits computed by transformers alone, in the same two chunks the
    cache uses: the model's own forward (its own image embedding and scatter) over the prefix
    turn 1 shares with turn 2, into a ``DynamicCache``, then turn 2's remaining tokens on it.
    Only the token ids and the model's own 3D positions come from RadDraft. Max |difference|
    of these logits from RadDraft's cache and from one full pass: if the first is at the
    batch floor and the second is the cache's own difference, the cache computes what
    transformers computes for the same split, and what is left is the split's rounding."""
    import torch
    from transformers import DynamicCache

    model = backend.model
    with torch.inference_mode():
        encoded = backend.encode(second)
        ids1, ids2 = backend.encode(first).ids, encoded.ids
        limit = min(len(ids1), len(ids2) - 1)
        split = int((ids1[:limit] == ids2[:limit]).to(torch.int).cumprod(0).sum())
        ids = encoded.ids[None].to(backend.device)
        positions = backend._rope_positions(encoded)
        cache = DynamicCache(config=model.config)
        model.model.rope_deltas = None
        model(
            input_ids=ids[:, :split],
            attention_mask=torch.ones_like(ids[:, :split]),
            pixel_values=encoded.pixel_values.to(backend.device),
            image_grid_thw=encoded.grid.to(backend.device),
            mm_token_type_ids=(ids[:, :split] == backend.image_token_id).to(torch.int),
            position_ids=positions[:, :, :split],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        chunked = (
            model(
                input_ids=ids[:, split:],
                position_ids=positions[:, :, split:],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[0, -1]
            .float()
        )
        ours, reused = cache_logits(backend, second)
        full = full_pass(backend, encoded)
    assert reused == split, (reused, split)
    return {
        "chunked_vs_cache": float((chunked - ours).abs().max()),
        "chunked_vs_full": float((chunked - full).abs().max()),
        "chunked_split": float(split),
    }


def logits_only(backend: Any, image: Any, floor: bool) -> list[dict[str, Any]]:
    """The cache against one full pass on turn 2, without generating (fast enough for fp32
    on a CPU): turn 1 prefilled into the cache, turn 2's tail run on top of it."""
    from models import Conversation, Message
    from models._prompts import QWEN_SYSTEM_PROMPT

    first = Conversation(QWEN_SYSTEM_PROMPT, (Message("user", FINDINGS, (image,)),))
    second = first.then(Message("assistant", "No acute findings."), Message("user", SECOND))

    backend.reset_cache()
    backend.prompt_logits(first, keep=True)  # turn 1 into the engine's cache
    row: dict[str, Any] = {"check": "turn 2 logits", "same": True}
    row.update(next_token_logits(backend, second))
    row["same"] = row["same_argmax"]
    if floor:
        row["noise_floor"] = noise_floor(backend, second)
        row["decode_step_floor"] = decode_step_floor(backend, second)
        row.update(chunked_reference(backend, first, second))
    return [row]


def compare(backend: Any, image: Any, tokens: int, branches: bool) -> list[dict[str, Any]]:
    """Each check: the cached path, then the stock path, token ids side by side."""
    from models import Conversation, DecodeOptions, Message
    from models._prompts import QWEN_SYSTEM_PROMPT

    options = DecodeOptions(max_new_tokens=tokens)
    first = Conversation(QWEN_SYSTEM_PROMPT, (Message("user", FINDINGS, (image,)),))
    rows: list[dict[str, Any]] = []

    def run(name: str, conversations: list[Any]) -> list[Any]:
        backend.prefix_cache = True
        started = time.perf_counter()
        if len(conversations) == 1:
            cached = [backend.generate(conversations[0], options)]
        else:
            cached = backend.generate_batch(conversations, options)
        cached_s = time.perf_counter() - started
        backend.prefix_cache = False
        started = time.perf_counter()
        stock = [backend.generate(c, options) for c in conversations]
        stock_s = time.perf_counter() - started
        backend.prefix_cache = True
        for i, (c, s) in enumerate(zip(cached, stock, strict=True)):
            rows.append(
                {
                    "check": name + (f"[{i}]" if len(conversations) > 1 else ""),
                    "prompt_tokens": s.prompt_tokens,
                    "cached_tokens": c.cached_tokens,
                    "cached_ids": c.token_ids[0],
                    "stock_ids": s.token_ids[0],
                    "same": c.token_ids[0] == s.token_ids[0],
                    "cached_s": cached_s / len(conversations),
                    "stock_s": stock_s / len(conversations),
                }
            )
        return cached

    backend.reset_cache()
    answer = run("turn 1 (cold cache)", [first])[0]
    # The stock path never touches the cache: it still holds turn 1 for turn 2 to reuse.
    second = first.then(Message("assistant", answer.text), Message("user", SECOND))
    logits_row = next_token_logits(backend, second)
    run("turn 2 (prefix reused)", [second])
    rows[-1].update(logits_row)
    if branches:
        backend.reset_cache()
        run(
            "branches",
            [
                first,
                Conversation(QWEN_SYSTEM_PROMPT, (Message("user", SECOND, (image,)),)),
            ],
        )
    return rows


def print_row(row: dict[str, Any], dtype: str) -> None:
    """One check's figures, as the README quotes them."""
    if "cached_ids" in row:
        print(
            f"  {row['check']:24s} prompt {row['prompt_tokens']:4d} "
            f"reused {row['cached_tokens']:4d} cached {row['cached_s']:6.1f} s "
            f"stock {row['stock_s']:6.1f} s same={row['same']}"
        )
        print(f"    cached {row['cached_ids']}\n    stock  {row['stock_ids']}")
    if "noise_floor" in row:
        print(
            f"    noise floor ({dtype}: one full pass vs the same in a batch of two): "
            f"max |diff| {row['noise_floor']:.4f}"
        )
        print(
            f"    KV caching itself ({dtype}: one decode step on a cache, as generate "
            f"makes every later token, vs a full pass): max |diff| "
            f"{row['decode_step_floor']:.4f}"
        )
    if "chunked_vs_cache" in row:
        print(
            f"    transformers alone, same split ({row['chunked_split']:.0f} tokens "
            f"then the rest): vs the cache max |diff| {row['chunked_vs_cache']:.4f}, "
            f"vs one full pass {row['chunked_vs_full']:.4f}"
        )
    if "logits_max_abs_diff" in row:
        print(
            f"    next-token logits, cache ({row['reused_for_logits']} reused) vs one "
            f"full pass: max |diff| {row['logits_max_abs_diff']:.4f} (logit std "
            f"{row['logits_scale']:.3f}, top-2 gap {row['top2_gap']:.4f}), same argmax "
            f"{row['same_argmax']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--branches", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default="", help="folder to keep the checkpoint in (reused)")
    parser.add_argument(
        "--logits-only",
        action="store_true",
        help="compare turn 2's next-token logits only (no generation): fp32 in minutes",
    )
    parser.add_argument(
        "--noise-floor", action="store_true", help="also the dtype's own rounding difference"
    )
    parser.add_argument(
        "--smoke-layers",
        type=int,
        default=0,
        help="smoke test of the script only: this many text layers and vision blocks",
    )
    args = parser.parse_args()
    if args.smoke_layers:
        TEXT_CONFIG["num_hidden_layers"] = args.smoke_layers
        VISION_CONFIG["depth"] = args.smoke_layers
        VISION_CONFIG["fullatt_block_indexes"] = [args.smoke_layers - 1]
        print(f"SMOKE TEST: {args.smoke_layers} layers, not the full size")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from models import build_tiny
    from models._hf import TransformersBackend

    scratch = tempfile.TemporaryDirectory(prefix="raddraft-fullsize-")
    folder = Path(args.keep) if args.keep else Path(scratch.name) / "qwen2.5-vl-3b-random"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not (folder / "config.json").exists():
        count = build(folder, args.seed)
        qwen_tokenizer(build_tiny(Path(scratch.name) / "tiny"), folder)
        made = f"{count / 1e9:.3f} B parameters, built in {time.perf_counter() - started:.0f} s"
    else:
        made = "kept from an earlier run (--keep)"
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**30
    print(
        f"checkpoint {folder}: {size:.2f} GiB on disk, {made}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {args.device}"
    )
    image, _ = chest_image()
    print(f"image: 2048x2500 16-bit DX -> model input {image.size[0]}x{image.size[1]}")

    need = {"bf16": 9.0, "fp32": 17.0}
    results: dict[str, str] = {}
    all_same = True
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        if args.device == "cpu" and available_gb() < need.get(dtype, 9.0):
            print(
                f"{dtype}: SKIPPED, needs ~{need[dtype]:.0f} GB, {available_gb():.1f} GB available"
            )
            results[dtype] = "skipped"
            continue
        started = time.perf_counter()
        backend = TransformersBackend.load(
            folder, device=args.device, dtype=dtype, local_files_only=True, max_pixels=MAX_PIXELS
        )
        loaded = time.perf_counter() - started
        print(f"{dtype}: loaded through from_pretrained in {loaded:.0f} s ({backend.model.dtype})")
        if args.logits_only:
            rows = logits_only(backend, image, args.noise_floor and dtype != "fp32")
        else:
            rows = compare(backend, image, args.max_new_tokens, args.branches)
        for row in rows:
            print_row(row, dtype)
        same = all(r["same"] for r in rows)
        distinct = len({t for r in rows for t in r.get("stock_ids", [])})
        diffs = [r["logits_max_abs_diff"] for r in rows if "logits_max_abs_diff" in r]
        results[dtype] = (
            f"{'same' if same else 'DIFFERENT'}({distinct} distinct tokens, "
            f"logit diff {max(diffs):.3g})"
        )
        all_same &= same
        del backend
        gc.collect()
    ran = [d for d, r in results.items() if r != "skipped"]
    print(
        f"RESULT identical={'yes' if all_same and ran else 'no'} dtypes="
        + ",".join(f"{d}:{r}" for d, r in results.items())
        + f" tokens={args.max_new_tokens} device={args.device}"
    )
    scratch.cleanup()


if __name__ == "__main__":
    main()

"""The drafting engine on one GPU: per-token cost, one reading, studies per hour, bf16 check.

    python bench/gpu.py [--budget-s 330] [--levels 1,8,32,64] [--tokens 64] [--scaling-tokens 32]
    python bench/gpu.py --smoke          # the same steps on a small 2-layer model, on the CPU

A random-weight model with CheXOne's exact configuration (Qwen2.5-VL-3B: 36 layers, bf16; the
configs and the weight draw of ``bench/verify_fullsize.py``) is built directly on the device (no
download, no checkpoint on disk) and served by :class:`models._hf.TransformersBackend`, the
processor being the tiny checkpoint's with Qwen's token ids. Then, in one run:

1. per-token cost, one sequence: the single-turn findings prompt with one 448x560 image (357
   prompt tokens), ``--tokens`` new tokens, the engine against stock ``model.generate`` (batch
   1); per token = (time for N tokens - time for 1) / (N - 1), so the prefill is left out;
2. one reading (current and prior image; the eight CXRTrek stages and the single-turn report
   prompts; ``--tokens`` a turn): wall time, the share inside the model's forward passes
   (forward hooks that synchronise the device), and the time to the draft;
3. studies per hour with 1, 8, 32, 64 studies in flight (``--scaling-tokens`` a turn; every
   study has its own images, so nothing is shared between studies), against one at a time in
   the same run, and the median time to draft at each level; rows a pass, and a pass's time on
   the host (launching its kernels) against the device's (CUDA events): where they are near,
   the host bounds the passes, and CUDA graphs are what would help;
4. bf16: turn 2's next-token logits from the engine's prefix cache against transformers' own
   forward run in the same two chunks, against one full pass, and against bf16's own noise
   floor (the same pass in a batch of two); and eight studies' turn 2 in one batch against each
   alone.

It keeps to ``--budget-s`` (default 330 s after the build, inside a 6-minute slot): a level
that would not fit is skipped and says so. Random weights rarely stop early; a turn runs to
its token limit. ``--smoke`` runs every step on a 2-layer, narrow model on the CPU (fp32, then
bf16 for step 4) in well under a minute, so the script cannot rot; its figures mean nothing.
``bench/gpu_wheels.sh`` prepares the wheels the GPU machine lacks and prints the command to run
it there.
The last line is ``RESULT device=... ms_per_token=... stock_ms_per_token=... reading_s=...
forward_share=... draft_s=... studies_per_hour_1=... scaling_8=... host_ms_per_pass_64=...
device_ms_per_pass_64=... moves_per_study_64=... bf16_cache_vs_transformers=...
bf16_batched_vs_alone=... bf16_noise_floor=...``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import verify_fullsize as full  # this folder: scripts run as `python bench/gpu.py`
from reading_profile import ForwardClock, model_parts

SMOKE_TEXT = {
    "num_hidden_layers": 2,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
SMOKE_VISION = {
    "depth": 2,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_heads": 2,
    "out_hidden_size": 256,
    "fullatt_block_indexes": [1],
}


def build_model(device: str, dtype: Any, seed: int) -> Any:
    """CheXOne's architecture with random weights, drawn on ``device`` as verify_fullsize draws
    them (N(0, 1/fan_in), sharper queries and keys, embeddings at 0.02, tied LM head)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    config = Qwen2_5_VLConfig(
        text_config=full.TEXT_CONFIG,
        vision_config=full.VISION_CONFIG,
        image_token_id=full.QWEN_IDS["<|image_pad|>"],
        video_token_id=full.QWEN_IDS["<|video_pad|>"],
        vision_start_token_id=full.QWEN_IDS["<|vision_start|>"],
        vision_end_token_id=full.QWEN_IDS["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in its own dtype: no fp32 copy of 3.75 B weights
    try:
        with torch.device(device), no_init_weights():
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.tie_weights()
    generator = torch.Generator(device=device).manual_seed(seed)
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param is embeddings:
                param.normal_(0.0, 0.02, generator=generator)
            elif param.dim() >= 2:
                scale = param[0].numel() ** -0.5
                if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
                    scale *= 3.0
                param.normal_(0.0, scale, generator=generator)
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def backend_on(device: str, dtype: Any, scratch: Path, seed: int) -> Any:
    """The engine's backend around a freshly drawn model and a processor with Qwen's ids."""
    from transformers import AutoProcessor

    from models import build_tiny
    from models._hf import TransformersBackend, kv_cache_bytes
    from models._images import pixel_bounds

    folder = scratch / "processor"
    folder.mkdir()
    full.qwen_tokenizer(build_tiny(scratch / "tiny"), folder)
    processor = AutoProcessor.from_pretrained(
        folder, size=pixel_bounds(56 * 56, full.MAX_PIXELS), local_files_only=True
    )
    model = build_model(device, dtype, seed)
    return TransformersBackend(
        model,
        processor,
        model_id="random Qwen2.5-VL-3B (CheXOne config)",
        kv_cache_bytes=kv_cache_bytes(0.0, device),  # the worker's default budget
    )


def variant(image: Any, index: int) -> Any:
    """The image with a few pixels set from ``index``: another study's image, same size."""
    import numpy as np
    from PIL import Image

    array = np.array(image)
    array[:4, :4] = [index % 251, (index // 251) % 251, 7]
    return Image.fromarray(array)


def per_token(backend: Any, image: Any, tokens: int) -> tuple[float, float, int]:
    """ms per new token of the engine and of stock ``generate``, one sequence, and the count."""
    from models import Conversation, DecodeOptions, Message
    from models._prompts import QWEN_SYSTEM_PROMPT

    conversation = Conversation(QWEN_SYSTEM_PROMPT, (Message("user", full.FINDINGS, (image,)),))

    def run(n: int, engine: bool) -> tuple[float, int]:
        backend.prefix_cache = engine
        backend.reset_cache()
        generation = backend.generate(conversation, DecodeOptions(max_new_tokens=n))
        return generation.total_seconds, generation.completion_tokens[0]

    out = []
    for engine in (True, False):
        run(2, engine)  # warm-up
        one, _ = run(1, engine)
        many, count = run(tokens, engine)
        out.append(((many - one) / max(count - 1, 1) * 1000, count))
    backend.prefix_cache = True
    return out[0][0], out[1][0], out[0][1]


SMOKE_VOCABULARY: tuple[str, ...] = ()  # set by --smoke: fewer presence questions


def reader_for(backend: Any, tokens: int) -> Any:
    from models import ModelInfo, Reader, ReaderConfig

    config = ReaderConfig(max_new_tokens=tokens, max_new_tokens_reasoning=tokens)
    if SMOKE_VOCABULARY:
        config = ReaderConfig(
            max_new_tokens=tokens,
            max_new_tokens_reasoning=tokens,
            findings_vocabulary=SMOKE_VOCABULARY,
        )
    return Reader(backend, config, ModelInfo(backend.model_id, None, True, "transformers", ""))


def one_reading(backend: Any, image: Any, tokens: int, sync: Any) -> dict[str, float]:
    """One study read alone: wall, share inside forward passes, time to draft."""
    from models import StudyImage

    reader = reader_for(backend, tokens)
    clock = ForwardClock(model_parts(backend.model), sync)
    backend.reset_cache()
    current = StudyImage(picture=variant(image, 100_001))
    prior = StudyImage(picture=variant(image, 100_002))
    started = time.perf_counter()
    reading = reader.read([current], [prior])
    wall = time.perf_counter() - started
    return {
        "wall": wall,
        "share": clock.seconds / wall,
        "draft": reading.draft_seconds,
        "turns": sum(len(s.turns) for s in reading.stages) + len(reading.report_turns),
        "tokens": reading.completion_tokens,
    }


class PassClock:
    """The engine's passes, timed at the language model's call: the host's time in it (on a
    GPU, launching the pass's kernels, which run asynchronously) and the device's time for the
    same work (CUDA events; on the CPU the two are one). A host time near the device's means
    the passes are bound by launching kernels, the case CUDA graphs remove."""

    def __init__(self, engine: Any, cuda: bool) -> None:
        import torch

        self.torch, self.engine, self.cuda = torch, engine, cuda
        self.real = engine._language
        self.host, self.passes = 0.0, 0
        self.events: list[tuple[Any, Any]] = []
        engine._language = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.cuda:
            start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
        began = time.perf_counter()
        out = self.real(*args, **kwargs)
        self.host += time.perf_counter() - began
        if self.cuda:
            end.record()
            self.events.append((start, end))
        self.passes += 1
        return out

    def close(self) -> dict[str, float]:
        """Stop timing; milliseconds a pass on the host and on the device."""
        self.engine._language = self.real
        device = self.host
        if self.cuda:
            self.torch.cuda.synchronize()
            device = sum(start.elapsed_time(end) for start, end in self.events) / 1e3
        passes = max(self.passes, 1)
        return {"host_ms": self.host / passes * 1e3, "device_ms": device / passes * 1e3}


def level(backend: Any, image: Any, k: int, tokens: int, offset: int) -> dict[str, float]:
    """``k`` studies read at once, each in its own thread with its own images."""
    from models import StudyImage

    reader = reader_for(backend, tokens)
    backend.reset_cache()
    pairs = [
        (
            StudyImage(picture=variant(image, offset + 2 * i)),
            StudyImage(picture=variant(image, offset + 2 * i + 1)),
        )
        for i in range(k)
    ]
    clock = PassClock(backend.engine, cuda=backend.engine.device.type == "cuda")
    passes, rows = backend.engine.forward_passes, backend.engine.rows_decoded
    moves = backend.engine.moves
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=k) as pool:
            readings = list(pool.map(lambda pair: reader.read([pair[0]], [pair[1]]), pairs))
    finally:
        timed = clock.close()
    wall = time.perf_counter() - started
    count = max(backend.engine.forward_passes - passes, 1)
    return {
        "wall": wall,
        "per_hour": k / wall * 3600,
        "draft_p50": statistics.median(r.draft_seconds for r in readings),
        "rows_per_pass": (backend.engine.rows_decoded - rows) / count,
        # A move copies a sequence in every layer: on a GPU, hundreds of small copies to launch.
        "moves_per_study": (backend.engine.moves - moves) / k,
        **timed,
    }


def bf16_check(backend: Any, image: Any) -> dict[str, float]:
    """The engine's turn-2 logits against transformers' own forward in the same split, one
    full pass, bf16's floor; and eight studies' turn 2 batched against alone."""
    from models import Conversation, Message
    from models._engine import Sampling
    from models._prompts import QWEN_SYSTEM_PROMPT

    def turns(picture: Any) -> tuple[Any, Any]:
        first = Conversation(QWEN_SYSTEM_PROMPT, (Message("user", full.FINDINGS, (picture,)),))
        second = first.then(
            Message("assistant", "No acute findings."), Message("user", full.SECOND)
        )
        return first, second

    backend.reset_cache()
    first, second = turns(image)
    backend.prompt_logits(first, keep=True)
    split = full.chunked_reference(backend, first, second)
    floor = full.noise_floor(backend, second)
    decode_floor = full.decode_step_floor(backend, second)
    pairs = [turns(variant(image, 200_000 + i)) for i in range(8)]
    for one, _ in pairs:
        backend.prompt_logits(one, keep=True)
    alone = [backend.prompt_logits(two)[0] for _, two in pairs]
    prompts = [backend._prompt(backend.encode(two)) for _, two in pairs]
    batched = backend.engine.submit_many(
        prompts, Sampling(max_new_tokens=1), keep=False, logits=True
    )
    worst = max(float((b.logits - a).abs().max()) for a, b in zip(alone, batched, strict=True))
    return {
        "cache_vs_transformers": split["chunked_vs_cache"],
        "cache_vs_full": split["chunked_vs_full"],
        "noise_floor": floor,
        "decode_floor": decode_floor,
        "batched_vs_alone": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="2-layer narrow model on the CPU")
    parser.add_argument("--budget-s", type=float, default=330.0)
    parser.add_argument("--levels", default="")
    parser.add_argument("--tokens", type=int, default=0)
    parser.add_argument("--scaling-tokens", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    smoke = args.smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    if smoke:
        global SMOKE_VOCABULARY
        SMOKE_VOCABULARY = ("Cardiomegaly", "Pleural Effusion")
        full.TEXT_CONFIG.update(SMOKE_TEXT)
        full.VISION_CONFIG.update(SMOKE_VISION)
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    levels = [int(x) for x in (args.levels or ("1,2" if smoke else "1,8,32,64")).split(",")]
    tokens = args.tokens or (3 if smoke else 64)
    scaling_tokens = args.scaling_tokens or (2 if smoke else 32)
    dtype = torch.float32 if smoke else torch.bfloat16
    sync = None if smoke else torch.cuda.synchronize
    where = (
        "SMOKE TEST on the CPU: 2 layers, narrow; the figures mean nothing"
        if smoke
        else f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    )
    print(where)

    scratch = tempfile.TemporaryDirectory(prefix="raddraft-gpu-")
    started = time.perf_counter()
    backend = backend_on(device, dtype, Path(scratch.name), args.seed)
    params = sum(p.numel() for p in backend.model.parameters())
    print(f"model built on {device} in {time.perf_counter() - started:.0f} s: {params / 1e9:.3f} B")
    image, _ = full.chest_image()
    began = time.perf_counter()
    result: dict[str, str] = {"device": device, "smoke": str(int(smoke))}

    # The smoke run's other steps keep to a few tokens a turn; its per-token figure takes 16,
    # so that it compares decode steps rather than one prefill's noise.
    ours, stock, count = per_token(backend, image, 16 if smoke else tokens)
    print(
        f"1. per new token, one sequence ({count} tokens): engine {ours:.2f} ms, stock generate "
        f"{stock:.2f} ms ({stock / ours:.2f}x)"
    )
    result.update(ms_per_token=f"{ours:.2f}", stock_ms_per_token=f"{stock:.2f}")

    alone = one_reading(backend, image, tokens, sync)
    print(
        f"2. one reading ({alone['turns']:.0f} turns, {alone['tokens']:.0f} new tokens): "
        f"{alone['wall']:.1f} s, {alone['share']:.1%} inside forward passes, draft at "
        f"{alone['draft']:.1f} s"
    )
    result.update(
        reading_s=f"{alone['wall']:.2f}",
        forward_share=f"{alone['share']:.3f}",
        draft_s=f"{alone['draft']:.2f}",
    )

    print(f"3. studies in flight, {scaling_tokens} new tokens a turn:")
    print(
        "   in flight   wall s  studies/h  draft p50 s  ratio to 1  rows/pass  "
        "host ms/pass  device ms/pass  moves/study"
    )
    results: dict[int, dict[str, float]] = {}
    for index, k in enumerate(levels):
        spent = time.perf_counter() - began
        last = results[levels[index - 1]]["wall"] if index else 0.0
        if index and spent + last * 2 > args.budget_s:
            print(f"   {k:9d}  skipped: {spent:.0f} s spent of {args.budget_s:.0f}")
            continue
        results[k] = level(backend, image, k, scaling_tokens, offset=1000 * k)
        base = results[levels[0]]["per_hour"]
        r = results[k]
        print(
            f"   {k:9d}  {r['wall']:7.1f}  {r['per_hour']:9.0f}  {r['draft_p50']:11.1f}  "
            f"{r['per_hour'] / base:10.2f}  {r['rows_per_pass']:9.1f}  {r['host_ms']:12.2f}  "
            f"{r['device_ms']:14.2f}  {r['moves_per_study']:11.1f}"
        )
    engine = backend.engine
    store = engine.store_bytes / 2**30
    budget = (engine.memory_bytes or 0) / 2**30
    print(
        f"   key/value store after the levels: {engine.slots} slots x {engine.capacity} tokens = "
        f"{store:.2f} GiB of a {budget:.2f} GiB budget; {engine.waits} turns waited for room, "
        f"{engine.cut_rows} answers cut"
    )
    result.update(
        kv_store_gib=f"{store:.2f}", kv_waits=str(engine.waits), kv_cut_rows=str(engine.cut_rows)
    )
    base = results[levels[0]]["per_hour"]
    for k, r in results.items():
        result[f"studies_per_hour_{k}"] = f"{r['per_hour']:.0f}"
        if k != levels[0]:
            result[f"scaling_{k}"] = f"{r['per_hour'] / base:.2f}"
    top = max(results)  # the most in flight: is a pass bound by the host's launches there?
    result.update(
        {
            f"host_ms_per_pass_{top}": f"{results[top]['host_ms']:.2f}",
            f"device_ms_per_pass_{top}": f"{results[top]['device_ms']:.2f}",
            f"moves_per_study_{top}": f"{results[top]['moves_per_study']:.1f}",
        }
    )

    if smoke:
        backend.model.to(torch.bfloat16)
        backend.engine = type(backend.engine)(
            backend.model, eos_ids=backend.eos_ids, pad_id=backend.pad_id
        )
        for entry in backend._images.values():
            entry.features = None  # computed again by the bf16 model
    check = bf16_check(backend, image)
    print(
        f"4. bf16, turn 2's next-token logits: engine vs transformers' own forward in the same "
        f"split max |diff| {check['cache_vs_transformers']:.4f}; vs one full pass "
        f"{check['cache_vs_full']:.4f}; bf16 floors: batch of two vs one "
        f"{check['noise_floor']:.4f}, one KV-cache decode step vs a full pass "
        f"{check['decode_floor']:.4f}; eight studies batched vs alone "
        f"{check['batched_vs_alone']:.4f}"
    )
    result.update(
        bf16_cache_vs_transformers=f"{check['cache_vs_transformers']:.4f}",
        bf16_batched_vs_alone=f"{check['batched_vs_alone']:.4f}",
        bf16_noise_floor=f"{max(check['noise_floor'], check['decode_floor']):.4f}",
    )
    print(f"steps took {time.perf_counter() - began:.0f} s")
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    scratch.cleanup()


if __name__ == "__main__":
    main()

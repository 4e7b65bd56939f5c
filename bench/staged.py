"""Time the eight-stage reading of a two-image study, with and without prefix KV-cache reuse.

    python bench/staged.py [--model PATH_OR_HUB_ID] [--max-new-tokens 16] [--repeats 3]

Default model: the tiny random-weight checkpoint, built fresh into a temporary folder. Variants,
each with the same max new tokens per turn (the random model rarely stops early, so every turn
writes about that many tokens):

* staged, no reuse: stock ``model.generate`` on the whole conversation for every turn;
* staged, reuse: the prefix cache (images encoded once, earlier turns never re-read);
* staged, reuse + stage-2 branches: presence questions decoded as one batch from the shared
  prefix (a different conversation: siblings do not see each other's answers);
* staged, reuse + self-consistency: 8 answers sampled per presence question (the paper's
  confidence), the cost of turning ``RADDRAFT_CONSISTENCY_SAMPLES`` on;
* single: one findings prompt on the current image alone.

Every staged variant includes the single-turn report prompts (findings, impression,
grounding, progression) that follow the eight stages by default.

Each variant runs ``--repeats`` times after one warm-up; the best time counts. Both wall-clock
and process CPU time are printed. On the CPU the RESULT uses CPU time with one torch thread
(``--clock auto``): on a small machine shared with other work, wall time scatters threefold from
run to run while CPU time measures this process's own work. On a GPU it uses wall time.
The last line is ``RESULT staged_over_single=<x> reuse_speedup=<y> consistency_cost=<z>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def radiograph(rows: int, cols: int, seed: int) -> Dataset:
    """A 12-bit synthetic chest-sized radiograph (smooth noise plus a bright block)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(300, 3500, size=(rows // 64 + 1, cols // 64 + 1)).astype(np.float64)
    pixels = np.kron(coarse, np.ones((64, 64)))[:rows, :cols]
    pixels[rows // 3 : rows // 2, cols // 4 : cols // 2] = 4000
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def best(run: Callable[[], object], repeats: int) -> tuple[float, float, Any]:
    """Best wall and best CPU time of ``repeats`` runs after one warm-up, and the last result."""
    run()
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="hub id or folder (default: tiny, built fresh)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 keeps timings steady on a shared machine (0: torch's default)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from models import (
        Conversation,
        DecodeOptions,
        Message,
        ModelInfo,
        Reader,
        ReaderConfig,
        StudyImage,
        build_tiny,
        load_backend,
        prepare_image,
    )
    from models._prompts import FINDINGS_PROMPT, QWEN_SYSTEM_PROMPT

    scratch = tempfile.TemporaryDirectory()
    model = args.model or str(build_tiny(Path(scratch.name) / "tiny"))
    base = ReaderConfig(
        model=model,
        data_dir=Path(scratch.name),
        device=args.device,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        max_new_tokens_reasoning=args.max_new_tokens,
    )
    backend: Any  # the transformers backend: prefix_cache, reset_cache and _images are read
    backend, info = load_backend(base)
    print(
        f"model {info.model_id} (demo={info.demo}) on {getattr(backend, 'device', '?')}, "
        f"torch threads {torch.get_num_threads()}, max_new_tokens {args.max_new_tokens}"
    )

    current = StudyImage.from_dataset(radiograph(2048, 1700, 1))
    prior = StudyImage.from_dataset(radiograph(2000, 1800, 2))

    def staged(
        reuse: bool, branches: frozenset[int] = frozenset(), samples: int = 0
    ) -> Callable[[], object]:
        config = ReaderConfig(
            **{
                **base.__dict__,
                "prefix_cache": reuse,
                "branch_stages": branches,
                "consistency_samples": samples,
            }
        )
        reader = Reader(
            backend, config, ModelInfo(info.model_id, info.revision, info.demo, "bench", "")
        )

        def run() -> object:
            backend.prefix_cache = reuse
            backend.reset_cache()
            return reader.read([current], [prior])

        return run

    image, geometry = prepare_image(current.dataset)
    single_conversation = Conversation(
        QWEN_SYSTEM_PROMPT, (Message("user", FINDINGS_PROMPT, (image,)),)
    )

    def single() -> object:
        backend.prefix_cache = True
        backend.reset_cache()
        backend._images.clear()  # a fresh image, encoded once
        return backend.generate(
            single_conversation, DecodeOptions(max_new_tokens=args.max_new_tokens)
        )

    no_reuse = best(staged(False), args.repeats)
    reading = no_reuse[2]
    turns = sum(len(s.turns) for s in reading.stages)
    report_turns = len(reading.report_turns)
    prompt_tokens = reading.prompt_tokens
    reuse = best(staged(True), args.repeats)
    same = [t.raw for s in reading.stages for t in s.turns] == [
        t.raw for s in reuse[2].stages for t in s.turns
    ]
    branched = best(staged(True, frozenset({2})), args.repeats)
    sampled = best(staged(True, samples=8), args.repeats)
    confidences = [f.confidence for f in sampled[2].findings]
    alone = best(single, args.repeats)

    on_gpu = str(getattr(backend, "device", "cpu")).startswith("cuda")
    clock = args.clock if args.clock != "auto" else ("wall" if on_gpu else "cpu")
    pick = 0 if clock == "wall" else 1
    print(
        f"study: current {current.dataset.Columns}x{current.dataset.Rows} and prior, "
        f"model image {geometry.model_size[0]}x{geometry.model_size[1]}, {turns} staged turns "
        f"and {report_turns} single-turn report prompts, "
        f"{prompt_tokens} prompt tokens over all turns without reuse"
    )
    print("variant                  wall s    cpu s")
    for name, timing, note in (
        ("staged, no reuse", no_reuse, ""),
        ("staged, prefix reuse", reuse, f"same text as no reuse: {same}"),
        ("staged, reuse+branches", branched, "stage-2 presence questions batched"),
        (
            "staged, consistency x8",
            sampled,
            "confidences " + " ".join("-" if c is None else f"{c:.2f}" for c in confidences),
        ),
        ("single findings prompt", alone, f"{alone[2].prompt_tokens} prompt tokens"),
    ):
        print(f"{name:24s} {timing[0]:7.3f}  {timing[1]:7.3f}   {note}")
    print(
        f"wall: reuse_speedup={no_reuse[0] / reuse[0]:.2f} branches_speedup="
        f"{no_reuse[0] / branched[0]:.2f}; cpu: reuse_speedup={no_reuse[1] / reuse[1]:.2f} "
        f"branches_speedup={no_reuse[1] / branched[1]:.2f}; RESULT uses {clock} time"
    )
    print(
        f"RESULT staged_over_single={reuse[pick] / alone[pick]:.2f} "
        f"reuse_speedup={no_reuse[pick] / reuse[pick]:.2f} "
        f"consistency_cost={sampled[pick] / reuse[pick]:.2f}"
    )
    scratch.cleanup()


if __name__ == "__main__":
    main()

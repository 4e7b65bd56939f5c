"""Many studies in flight: never one study's prefix, image or answer in another's reading.

vLLM has had a bug where identical prompts with different images shared cached blocks. Here
several studies whose prompts are word for word the same, with different images, are read at
the same time: through the OpenAI-compatible backend against a real HTTP server that answers
from the pixels it received (a test double for vLLM), and on the tiny model through the
transformers backend's prefix cache, compared with readings done alone without any reuse.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from models import (
    Conversation,
    DecodeOptions,
    Message,
    ModelInfo,
    Reader,
    ReaderConfig,
    Reading,
    StudyImage,
    load_backend,
    prepare_image,
)
from models._engine import Sampling
from models._hf import TransformersBackend
from tests.models.conftest import radiograph
from tests.worker.model_server import send_json

VOCAB = ("Pleural Effusion",)


def pixels_digest(image: Image.Image) -> str:
    return hashlib.blake2b(image.tobytes(), digest_size=6).hexdigest()


class PixelServer:
    """A chat-completions server that answers from the images it was sent: every answer names
    the digests of the request's images, so an answer shows which pixels it was made from."""

    def __init__(self, delay: float = 0.02) -> None:
        self.salts: list[tuple[str, tuple[str, ...]]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with lock:
                    outer.in_flight += 1
                    outer.most_in_flight = max(outer.most_in_flight, outer.in_flight)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                digests = []
                for message in body["messages"]:
                    for part in message["content"] if isinstance(message["content"], list) else []:
                        if part["type"] == "image_url":
                            data = part["image_url"]["url"].split(",", 1)[1]
                            sent = Image.open(io.BytesIO(base64.b64decode(data)))
                            # RGB, as vLLM's image loader makes every image it receives.
                            digests.append(pixels_digest(sent.convert("RGB")))
                last = body["messages"][-1]["content"]
                question = last if isinstance(last, str) else last[-1]["text"]
                with lock:
                    outer.salts.append((body.get("cache_salt", ""), tuple(digests)))
                time.sleep(delay)  # so that the studies' requests overlap
                text = "(A) Yes" if question.startswith("Is there") else "seen " + " ".join(digests)
                reply = {
                    "choices": [
                        {"index": 0, "message": {"content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 3},
                }
                send_json(self, reply)
                with lock:
                    outer.in_flight -= 1

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.request_queue_size = 64
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pixel_server() -> Iterator[PixelServer]:
    server = PixelServer()
    yield server
    server.close()


def study(seed: int) -> tuple[StudyImage, StudyImage]:
    """A current and a prior image, different for every seed (the bright block moves)."""
    current = radiograph(200, 180, (10 + seed * 7, 20, 60 + seed * 7, 90))
    prior = radiograph(190, 170, (15, 25 + seed * 5, 70, 95 + seed * 5))
    return StudyImage.from_dataset(current), StudyImage.from_dataset(prior)


def one_image_question(seed: int) -> Conversation:
    """A one-turn conversation about the current image of ``study(seed)``."""
    image = prepare_image(study(seed)[0].dataset)[0]
    return Conversation("s", (Message("user", "Findings?", (image,)),))


def answers(reading: Reading) -> list[str]:
    turns = [t for s in reading.stages for t in s.turns] + reading.report_turns
    return [t.answer for t in turns if t.answer.startswith("seen")]


def test_studies_in_flight_through_the_server_never_mix(
    pixel_server: PixelServer, tmp_path: Path
) -> None:
    config = ReaderConfig(
        backend="openai",
        server_url=pixel_server.url,
        data_dir=tmp_path,
        findings_vocabulary=VOCAB,
        max_new_tokens=8,
    )
    backend, info = load_backend(config)
    reader = Reader(backend, config, info)
    studies = [study(seed) for seed in range(8)]
    own = [{pixels_digest(prepare_image(image.dataset)[0]) for image in pair} for pair in studies]
    assert len(set.union(*own)) == 2 * len(studies)  # every image differs

    with ThreadPoolExecutor(max_workers=len(studies)) as pool:
        readings = list(pool.map(lambda s: reader.read([s[0]], [s[1]]), studies))

    assert pixel_server.most_in_flight > 1  # the studies really were read at the same time
    for reading, digests in zip(readings, own, strict=True):
        seen = answers(reading)
        assert len(seen) >= 8  # the staged turns and the single-turn report prompts
        for answer in seen:
            assert set(answer.split()[1:]) <= digests, (answer, digests)
        assert reading.findings_text.startswith("seen ")
    # The prefix-cache namespace follows the images: one per first-turn image set, never shared.
    salts: dict[str, set[tuple[str, ...]]] = {}
    for salt, digests in pixel_server.salts:
        salts.setdefault(salt, set()).add(digests[:1])
    assert all(salt for salt in salts)
    assert all(len(firsts) == 1 for firsts in salts.values())


@pytest.fixture
def backend(tiny_backend: TransformersBackend) -> Iterator[TransformersBackend]:
    tiny_backend.reset_cache()
    yield tiny_backend
    tiny_backend.prefix_cache = True
    tiny_backend.reset_cache()


def texts(reading: Reading) -> list[str]:
    return [t.raw for s in reading.stages for t in s.turns] + [t.raw for t in reading.report_turns]


def test_studies_in_flight_on_the_engine_never_mix_and_equal_readings_alone(
    backend: TransformersBackend,
) -> None:
    """Eight threads, identical prompts, different images, read at once: the engine batches
    their turns (fp32), sequences moved to sit side by side in the store; each reading is
    token for token the same reading done alone, with the engine and with stock ``generate``
    and no reuse at all."""
    config = ReaderConfig(findings_vocabulary=VOCAB, max_new_tokens=5)
    info = ModelInfo("raddraft/tiny-qwen2.5-vl", backend.revision, True, "transformers", "tiny")
    reader = Reader(backend, config, info)
    studies = [study(seed) for seed in range(8)]
    backend.engine.most_rows = 0
    moved = backend.engine.moves
    with ThreadPoolExecutor(max_workers=len(studies)) as pool:
        together = list(pool.map(lambda s: texts(reader.read([s[0]], [s[1]])), studies))
    assert backend.engine.most_rows >= 4  # turns of several studies shared forward passes
    assert backend.engine.moves > moved  # sequences moved to sit beside their pass
    backend.reset_cache()
    alone = [texts(reader.read([s[0]], [s[1]])) for s in studies]
    assert together == alone
    backend.prefix_cache = False
    stock = [texts(reader.read([s[0]], [s[1]])) for s in studies]
    assert together == stock
    assert len({tuple(t) for t in together}) == len(studies)  # the images change the answers


def test_batched_bf16_logits_stay_within_the_noise_floor(tiny_path: Path) -> None:
    """bf16: turn 2's next-token logits (prefix reused) of eight studies in one batch against
    each alone differ by no more than bf16's own floor: transformers' forward of the same
    prompt in a batch of two against alone (bench/verify_fullsize.py's noise floor)."""
    import torch

    from models import Conversation, Message

    bf16 = TransformersBackend.load(tiny_path, device="cpu", dtype="bf16", local_files_only=True)
    firsts, seconds = [], []
    for current, _ in (study(seed) for seed in range(8)):
        image = prepare_image(current.dataset)[0]
        first = Conversation("s", (Message("user", "Write the findings.", (image,)),))
        firsts.append(first)
        seconds.append(first.then(Message("assistant", "Clear."), Message("user", "Impression?")))
    for first in firsts:
        bf16.prompt_logits(first, keep=True)
    alone = [bf16.prompt_logits(second) for second in seconds]
    prompts = [bf16._prompt(bf16.encode(second)) for second in seconds]
    batched = bf16.engine.submit_many(prompts, Sampling(max_new_tokens=1), keep=False, logits=True)
    assert bf16.engine.most_rows >= 8
    floor = 0.0
    with torch.inference_mode():
        for second in seconds:
            encoded = bf16.encode(second)
            ids = encoded.ids[None].expand(2, -1).contiguous()
            pair = (
                bf16.model(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    mm_token_type_ids=(ids == bf16.image_token_id).to(torch.int),
                    pixel_values=torch.cat([encoded.pixel_values] * 2),
                    image_grid_thw=torch.cat([encoded.grid] * 2),
                    logits_to_keep=1,
                )
                .logits[:, -1]
                .float()
            )
            bf16.model.model.rope_deltas = None
            one = (
                bf16.model(
                    input_ids=ids[:1],
                    attention_mask=torch.ones_like(ids[:1]),
                    mm_token_type_ids=(ids[:1] == bf16.image_token_id).to(torch.int),
                    pixel_values=encoded.pixel_values,
                    image_grid_thw=encoded.grid,
                    logits_to_keep=1,
                )
                .logits[0, -1]
                .float()
            )
            bf16.model.model.rope_deltas = None
            floor = max(floor, float((pair[1] - one).abs().max()))
    for (logits, reused), result in zip(alone, batched, strict=True):
        assert reused > 0 and result.cached_tokens == reused
        assert float((result.logits - logits).abs().max()) <= floor


def test_a_full_store_drops_idle_prefixes_and_stays_exact(backend: TransformersBackend) -> None:
    """With room for two sequences only, a third conversation drops the least recently used
    idle one; asking that conversation again recomputes it, with the same tokens."""
    engine = backend.engine
    saved = engine.max_slots
    engine.reset()
    engine.max_slots = engine.slots = 2
    engine._free = [0, 1]
    try:
        conversations = [
            Conversation("s", (Message("user", "Findings?", (prepare_image(c.dataset)[0],)),))
            for c, _ in (study(seed) for seed in range(3))
        ]
        options = DecodeOptions(max_new_tokens=4)
        first = [backend.generate(c, options) for c in conversations]
        again = backend.generate(conversations[0], options)  # its slot went to the third
        assert engine.slots == 2 and len(engine._kept) == 2
        assert again.cached_tokens < first[0].prompt_tokens - 1
        assert again.token_ids == first[0].token_ids
        backend.prefix_cache = False
        assert [backend.generate(c, options).token_ids for c in conversations] == [
            g.token_ids for g in first
        ]
    finally:
        engine.max_slots, engine.slots = saved, int(engine.keys[0].shape[0])
        engine.reset()


def test_a_failed_step_reaches_its_callers_and_the_engine_serves_on(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation = one_image_question(1)
    options = DecodeOptions(max_new_tokens=3)
    expected = backend.generate(conversation, options).token_ids
    backend.reset_cache()
    engine = backend.engine
    real = engine._language

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine, "_language", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        backend.generate(conversation, options)
    monkeypatch.setattr(engine, "_language", real)
    assert backend.generate(conversation, options).token_ids == expected


def holding(engine: object, digest: str) -> int:
    """How many kept sequences of ``engine`` hold the image with this digest."""
    kept = engine._kept  # type: ignore[attr-defined]
    return sum(any(d == digest for _, d in seq.images) for seq in kept)


def test_a_finished_reading_lets_go_of_its_sequences_and_no_other(
    backend: TransformersBackend,
) -> None:
    """When a reading ends its conversations leave the store (at the engine's next step); a
    conversation of other images stays."""
    config = ReaderConfig(findings_vocabulary=VOCAB, max_new_tokens=3)
    info = ModelInfo("raddraft/tiny-qwen2.5-vl", backend.revision, True, "transformers", "tiny")
    other = prepare_image(study(7)[0].dataset)[0]
    conversation = Conversation("s", (Message("user", "Findings?", (other,)),))
    backend.generate(conversation, DecodeOptions(max_new_tokens=2))
    current, prior = study(3)
    spied: list[list[str]] = []
    real = backend.release

    def release(images: list[Image.Image]) -> None:
        spied.append([backend._digest(image) for image in images])
        real(images)

    backend.release = release  # type: ignore[method-assign]
    try:
        Reader(backend, config, info).read([current], [prior])
    finally:
        del backend.release
    [digests] = spied
    assert len(digests) == 2  # the current and the prior image
    backend.generate(conversation, DecodeOptions(max_new_tokens=2))
    assert all(holding(backend.engine, d) == 0 for d in digests)
    assert holding(backend.engine, backend._digest(other)) == 1


def test_forgetting_a_sequence_in_use_leaves_it_to_finish(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that arrives while the image's sequence decodes drops nothing in use: the
    answer is the one given without it, and its sequence is kept."""
    conversation = one_image_question(5)
    [image] = conversation.images
    options = DecodeOptions(max_new_tokens=6)
    expected = backend.generate(conversation, options).token_ids
    backend.reset_cache()
    engine = backend.engine
    real = engine._pass
    steps = []

    def step(joining: list[object]) -> None:
        if engine._running:  # the engine thread, mid-answer: the sequence is busy
            if not steps:
                assert all(seq.busy for seq in engine._kept)
                backend.release([image])
            steps.append(1)
        real(joining)

    monkeypatch.setattr(engine, "_pass", step)
    assert backend.generate(conversation, options).token_ids == expected
    assert len(steps) >= 3  # the release was handled at a later step, mid-answer
    assert holding(engine, backend._digest(image)) == 1


def test_one_pass_serves_a_decoding_answer_a_new_image_and_a_forked_question(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one answer decodes, a new study's first turn (its tail starts at offset 0) and a
    question forking a kept conversation's image prefix (its tail starts past that prefix)
    arrive together: the three share one packed pass, and every answer is token for token the
    one stock ``generate`` gives each alone (fp32)."""
    options = DecodeOptions(max_new_tokens=12)
    decoding, fresh = one_image_question(1), one_image_question(2)
    kept = one_image_question(3)
    forked = Conversation("s", (Message("user", "Impression?", kept.images),))
    backend.prefix_cache = False
    expected = [backend.generate(c, options).token_ids for c in (decoding, fresh, forked)]
    assert len(expected[0][0]) > 8  # long enough to decode while the others arrive
    backend.prefix_cache = True
    backend.reset_cache()
    backend.generate(kept, DecodeOptions(max_new_tokens=1))
    backend._encode_images([backend.encode(fresh)])  # its image's encoding: not inside the race
    engine = backend.engine
    real = engine._language
    plans: list[tuple[int, list[int]]] = []

    def language(**kwargs: Any) -> Any:
        plan = next(iter(kwargs["attention_mask"].values()))
        plans.append((plan.rows, [segment.start for segment in plan.segments]))
        if plan.rows and not plan.segments:
            time.sleep(0.02)  # a slow decode step: the others arrive while it decodes
        return real(**kwargs)

    monkeypatch.setattr(engine, "_language", language)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(backend.generate, decoding, options)
        deadline = time.monotonic() + 30
        while not engine._running and time.monotonic() < deadline:
            time.sleep(0.001)
        together = backend.generate_batch([fresh, forked], options)
        answers = [first.result().token_ids, *(g.token_ids for g in together)]
    assert answers == expected
    shared = [starts for rows, starts in plans if rows == 1 and len(starts) == 2]
    assert shared, plans
    assert sorted(shared[0])[0] == 0 and sorted(shared[0])[1] > 0


def test_a_model_loaded_with_eager_attention_drafts_as_its_own_generate(tiny_path: Path) -> None:
    """bf16, eager attention: the engine's packed passes give the tokens the model's own
    ``generate`` gives (first turns batched together, then each conversation's next turn on its
    kept prefix). Eager needs every mask spelled out in the dtype's lowest value; with sdpa's
    conventions four of four answers here differed."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tiny_path, dtype=torch.bfloat16, attn_implementation="eager", local_files_only=True
    ).eval()
    eager = TransformersBackend(
        model, AutoProcessor.from_pretrained(tiny_path, local_files_only=True), model_id="tiny"
    )
    options = DecodeOptions(max_new_tokens=12)
    firsts = [one_image_question(seed) for seed in range(4)]
    eager.prefix_cache = False
    expected = [eager.generate(c, options).token_ids for c in firsts]
    eager.prefix_cache = True
    together = eager.generate_batch(firsts, options)
    assert [g.token_ids for g in together] == expected
    seconds = [
        c.then(Message("assistant", g.texts[0]), Message("user", "Impression?"))
        for c, g in zip(firsts, together, strict=True)
    ]
    continued = eager.generate_batch(seconds, options)
    assert all(g.cached_tokens > 0 for g in continued)
    eager.prefix_cache = False
    assert [g.token_ids for g in continued] == [
        eager.generate(c, options).token_ids for c in seconds
    ]


def test_a_request_the_engine_cannot_serve_is_refused_alone(backend: TransformersBackend) -> None:
    """An empty prompt, or several greedy answers to one prompt, failed inside the engine's step
    and so failed every request in flight with it; they are refused in the caller's thread, and
    a conversation in flight meanwhile is answered."""
    prompt: Any = backend._prompt(backend.encode(one_image_question(41)))
    empty: Any = backend._prompt(backend.encode(one_image_question(41)))
    empty.ids = empty.ids[:0]
    engine = backend.engine
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(engine.submit, prompt, Sampling(max_new_tokens=64))
        with pytest.raises(ValueError, match="empty prompt"):
            engine.submit(empty, Sampling(max_new_tokens=4))
        with pytest.raises(ValueError, match="need sampling"):
            engine.submit(prompt, Sampling(max_new_tokens=4, rows=2))
        assert len(running.result(timeout=60).tokens[0]) > 0

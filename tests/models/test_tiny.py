"""The real loading path on the tiny checkpoint: from_pretrained offline, the reading in both
modes, determinism, and prefix-cache reuse giving exactly the stock ``generate`` tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models import (
    Conversation,
    DecodeOptions,
    Message,
    ModelInfo,
    Reader,
    ReaderConfig,
    Reading,
    StudyImage,
)
from models._hf import TransformersBackend
from tests.models.conftest import radiograph

VOCAB = ("Cardiomegaly", "Pleural Effusion")
TOKENS = 6


@pytest.fixture
def backend(tiny_backend: TransformersBackend) -> Iterator[TransformersBackend]:
    """The session's tiny model with a clean prefix cache, restored to reuse afterwards."""
    tiny_backend.reset_cache()
    yield tiny_backend
    tiny_backend.prefix_cache = True
    tiny_backend.reset_cache()


def make_reader(backend: TransformersBackend, **config: object) -> Reader:
    cfg = ReaderConfig(
        findings_vocabulary=VOCAB,
        max_new_tokens=TOKENS,
        max_new_tokens_reasoning=TOKENS,
        **config,  # type: ignore[arg-type]
    )
    info = ModelInfo("raddraft/tiny-qwen2.5-vl", backend.revision, True, "transformers", "tiny")
    return Reader(backend, cfg, info)


@pytest.fixture(scope="module")
def current() -> StudyImage:
    return StudyImage.from_dataset(radiograph(150, 131, (20, 30, 70, 90)))


@pytest.fixture(scope="module")
def prior() -> StudyImage:
    return StudyImage.from_dataset(
        radiograph(140, 150, (25, 35, 60, 100), photometric="MONOCHROME1")
    )


def texts(reading: Reading) -> list[str]:
    return [turn.raw for stage in reading.stages for turn in stage.turns]


def test_checkpoint_layout_and_offline_load(tiny_path: Path, backend: TransformersBackend) -> None:
    names = {p.name for p in tiny_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    assert sum(p.stat().st_size for p in tiny_path.iterdir()) < 8 * 2**20
    assert type(backend.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(backend.processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(backend.processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert backend.model.dtype == torch.float32
    tokenizer = backend.tokenizer
    for token in ("<|vision_start|>", "<|image_pad|>", "<|im_end|>", "<|ref|>", "<|box|>"):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_encode_matches_the_processor(backend: TransformersBackend, current: StudyImage) -> None:
    from models import prepare_image

    a, _ = prepare_image(current.dataset)
    b, _ = prepare_image(radiograph(90, 200, (1, 1, 9, 9)))
    conversation = Conversation(
        "sys",
        (
            Message("user", "first", (a,)),
            Message("assistant", "x"),
            Message("user", "second", (b, a)),
        ),
    )
    encoded = backend.encode(conversation)
    reference = backend.processor(
        text=[backend.render(conversation)], images=[a, b, a], return_tensors="pt"
    )
    assert torch.equal(encoded.ids, reference["input_ids"][0])
    assert torch.equal(encoded.pixel_values, reference["pixel_values"])
    assert torch.equal(encoded.grid, reference["image_grid_thw"])


def test_outputs_depend_on_the_image(backend: TransformersBackend) -> None:
    from models import prepare_image

    outputs = set()
    for rect in ((5, 5, 40, 40), (60, 60, 120, 140)):
        image, _ = prepare_image(radiograph(150, 131, rect))
        conversation = Conversation(
            "sys", (Message("user", "Write an example findings section for the CXR.", (image,)),)
        )
        outputs.add(backend.generate(conversation, DecodeOptions(max_new_tokens=12)).text)
    assert len(outputs) == 2


def test_reading_one_image_instruction_mode(
    backend: TransformersBackend, current: StudyImage
) -> None:
    reading = make_reader(backend).read([current])
    assert reading.demo
    assert [s.stage for s in reading.stages] == list(range(1, 9))
    assert reading.stages[4].skipped
    turns = [t for s in reading.stages for t in s.turns]
    assert all(t.mode == "instruction" and t.reasoning == "" for t in turns)
    assert all(0 < t.completion_tokens <= TOKENS for t in turns)
    # Every turn after the first reused the cached prefix (image included).
    assert turns[0].cached_tokens == 0
    assert all(t.cached_tokens > turns[0].prompt_tokens - 10 for t in turns[1:])
    assert json.loads(reading.to_json())["model"]["demo"] is True


def test_reading_with_prior_in_reasoning_mode(
    backend: TransformersBackend, current: StudyImage, prior: StudyImage
) -> None:
    reading = make_reader(backend, reasoning_stages=frozenset(range(1, 9))).read([current], [prior])
    stage5 = reading.stages[4]
    assert not stage5.skipped and stage5.turns[0].kind == "progression"
    assert stage5.turns[0].images == [1, 0]
    turns = [t for s in reading.stages for t in s.turns]
    assert all(t.mode == "reasoning" for t in turns)
    assert all(t.question.endswith("within \\boxed{{}}.") for t in turns)
    # A random model writes no \boxed{}: recorded, answer = whole output.
    for turn in turns:
        if turn.boxed_missing:
            assert turn.answer == turn.raw.strip()
    assert len(reading.unparsed) >= sum(t.boxed_missing for t in turns)


def test_deterministic_across_runs(
    backend: TransformersBackend, current: StudyImage, prior: StudyImage
) -> None:
    first = make_reader(backend).read([current], [prior])
    second = make_reader(backend).read([current], [prior])
    assert texts(first) == texts(second)


def test_prefix_reuse_equals_stock_generate(
    backend: TransformersBackend, current: StudyImage, prior: StudyImage
) -> None:
    """The KV-cache path must give the very tokens of ``model.generate`` without reuse (fp32,
    greedy), through a whole reading: a second image entering mid-conversation (stage 5, new
    3D positions), reasoning and instruction stages, re-tokenised earlier answers."""
    config = {"reasoning_stages": frozenset({1, 5, 8})}
    backend.prefix_cache = False
    stock = make_reader(backend, **config).read([current], [prior], indication="fever")
    backend.prefix_cache = True
    backend.reset_cache()
    reused = make_reader(backend, **config).read([current], [prior], indication="fever")
    assert texts(reused) == texts(stock)
    assert len(texts(stock)) == 2 + len(VOCAB) + 1 + 2 + 1 + 1 + 2 + 3 * len(
        reused.positive_findings
    )
    assert sum(t.cached_tokens for s in stock.stages for t in s.turns) == 0
    assert sum(t.cached_tokens for s in reused.stages for t in s.turns) > 0


def test_reuse_survives_a_different_conversation(
    backend: TransformersBackend, current: StudyImage
) -> None:
    """A second study (different image) must not see the first one's cache."""
    from models import prepare_image

    image, _ = prepare_image(current.dataset)
    other, _ = prepare_image(radiograph(150, 131, (80, 80, 120, 140)))
    question = "Write an example findings section for the CXR."
    options = DecodeOptions(max_new_tokens=10)
    cached = [
        backend.generate(Conversation("s", (Message("user", question, (img,)),)), options).text
        for img in (image, other, image)
    ]
    backend.prefix_cache = False
    stock = [
        backend.generate(Conversation("s", (Message("user", question, (img,)),)), options).text
        for img in (image, other, image)
    ]
    assert cached == stock and cached[0] != cached[1]


def test_branches_equal_separate_questions(
    backend: TransformersBackend, current: StudyImage
) -> None:
    from models import prepare_image

    image, _ = prepare_image(current.dataset)
    base = Conversation(
        "s", (Message("user", "What is the view?", (image,)), Message("assistant", "PA"))
    )
    questions = [
        "Is there edema?",
        "Is there cardiomegaly in this chest X-ray? Options:\n(A) Yes\n(B) No",
        "Why?",
    ]
    branches = [base.then(Message("user", q)) for q in questions]
    options = DecodeOptions(max_new_tokens=8)
    batched = backend.generate_batch(branches, options)
    assert all(g.cached_tokens > 0 for g in batched[1:])  # the first pays for the prefix
    backend.prefix_cache = False
    alone = [backend.generate(b, options) for b in branches]
    assert [g.text for g in batched] == [g.text for g in alone]


def test_prefix_tokens_equal_tokenising_the_whole_text(
    backend: TransformersBackend, current: StudyImage
) -> None:
    """A dialogue growing turn by turn, with branches off its prefix (as the staged reading and
    the report prompts make them): the ids reused from earlier texts plus the new text's are
    exactly the ids of the whole text, and earlier texts are reused."""
    from models import prepare_image
    from models._hf import _PrefixTokens

    image, _ = prepare_image(current.dataset)
    tokens = _PrefixTokens(backend.tokenizer)
    dialogue = Conversation("sys", (Message("user", "Describe the image.", (image,)),))
    texts = []
    for n, answer in enumerate(["A lung,  clear.\n", " Heart: normal; ", "\n\nno effusion", "ok"]):
        texts.append(backend.render(dialogue))
        for branch in ("Is there edema?", " (A) Yes\n(B) No", "Why?\n"):
            texts.append(backend.render(dialogue.then(Message("user", f"{branch} {n}"))))
        dialogue = dialogue.then(Message("assistant", answer)).then(Message("user", f"next {n}"))
    for text in texts:
        whole = list(backend.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert tokens.ids(text) == whole
    assert tokens._exact is True and tokens.reused > sum(map(len, texts)) // 20
    assert tokens.ids(texts[-1][:-3]) == list(
        backend.tokenizer(texts[-1][:-3], add_special_tokens=False)["input_ids"]
    )


def test_direct_rendering_equals_the_chat_template(
    backend: TransformersBackend, current: StudyImage, prior: StudyImage
) -> None:
    """Every conversation of a real reading (stages, branches, report prompts, with a prior) is
    rendered directly exactly as the checkpoint's chat template renders it; a checkpoint whose
    template writes something else is rendered through its template."""
    from models import prepare_image

    assert backend._chatml
    seen: list[Conversation] = []
    real = backend.encode

    def spied(conversation: Conversation) -> object:
        seen.append(conversation)
        return real(conversation)

    backend.encode = spied  # type: ignore[method-assign]
    try:
        make_reader(backend, reasoning_stages=frozenset({3})).read([current], [prior])
    finally:
        del backend.encode
    image, _ = prepare_image(current.dataset)
    seen.append(Conversation(" s ", (Message("user", "", (image, image, image)),)))
    assert len(seen) > 10
    for conversation in seen:
        assert backend.render(conversation) == backend._templated(conversation)
    template = backend.processor.chat_template
    try:
        backend.processor.chat_template = template.replace("<|im_end|>", "<|im_end|> ")
        other = TransformersBackend(backend.model, backend.processor, model_id="other")
        assert not other._chatml
        assert other.render(seen[0]) == other._templated(seen[0]) != backend.render(seen[0])
    finally:
        backend.processor.chat_template = template


def test_sampling_gives_n_answers(backend: TransformersBackend, current: StudyImage) -> None:
    from models import prepare_image

    image, _ = prepare_image(current.dataset)
    conversation = Conversation("s", (Message("user", "Is there edema?", (image,)),))
    options = DecodeOptions(max_new_tokens=6, do_sample=True, temperature=1.5, n=4, seed=3)
    sampled = backend.generate(conversation, options)
    assert len(sampled.texts) == 4 and len(set(sampled.texts)) > 1
    assert backend.generate(conversation, options).texts == sampled.texts  # seeded
    # The shared cache still holds the prompt only: greedy afterwards is unaffected.
    greedy = backend.generate(conversation, DecodeOptions(max_new_tokens=6)).text
    backend.prefix_cache = False
    assert backend.generate(conversation, DecodeOptions(max_new_tokens=6)).text == greedy


def test_self_consistency_on_the_tiny_model(
    backend: TransformersBackend, current: StudyImage
) -> None:
    reading = make_reader(backend, consistency_samples=4, consistency_temperature=1.5).read(
        [current]
    )
    for finding, turn in zip(reading.findings, reading.stages[1].turns, strict=True):
        assert len(turn.samples) == 4
        if finding.present is None:
            assert finding.confidence is None
        else:
            assert finding.confidence is not None and 0.0 <= finding.confidence <= 1.0
    # Sampling must not disturb the greedy conversation: same texts as without it.
    backend.reset_cache()
    plain = make_reader(backend).read([current])
    assert texts(plain) == texts(reading)


def test_answers_are_cut_to_fit_the_context(
    backend: TransformersBackend, current: StudyImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models import prepare_image

    image, _ = prepare_image(current.dataset)
    conversation = Conversation("s", (Message("user", "Write the findings.", (image,)),))
    length = int(backend.encode(conversation).ids.shape[0])
    text_config = backend.model.config.text_config
    monkeypatch.setattr(text_config, "max_position_embeddings", length + 3)
    assert (
        backend.generate(conversation, DecodeOptions(max_new_tokens=50)).completion_tokens[0] <= 3
    )
    monkeypatch.setattr(text_config, "max_position_embeddings", length)
    with pytest.raises(ValueError, match="exceeds the context"):
        backend.generate(conversation, DecodeOptions(max_new_tokens=50))


def test_no_deprecated_transformers_call(
    backend: TransformersBackend, current: StudyImage, prior: StudyImage, tiny_path: Path
) -> None:
    """Loading and a whole reading, engine and stock path, call nothing transformers has
    deprecated (``past_key_values`` goes in 5.40: the engine passes ``cache``)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TransformersBackend.load(tiny_path, device="cpu", local_files_only=True)
        make_reader(backend).read([current], [prior])
        backend.prefix_cache = False
        make_reader(backend).read([current], [prior])
    deprecated = [
        str(w.message)
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
        and "transformers" in w.filename
    ]
    assert deprecated == []

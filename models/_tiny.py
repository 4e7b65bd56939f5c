"""Build the tiny random-weight Qwen2.5-VL checkpoint used for tests, CI and demo mode.

The checkpoint has the same file layout as CheXOne (config, safetensors, tokenizer with the
Qwen2.5-VL chat template, image processor and the video processor transformers 5 insists on), so
it loads through exactly the calls the real model uses. Its weights are random with a large init
range so that the generated tokens depend visibly on the image and the prompt; nothing it writes
means anything clinically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models._images import pixel_bounds

# The stock Qwen2-VL / Qwen2.5-VL chat template (the default system prompt is the one CheXOne
# was trained with). Kept verbatim so the tiny model renders conversations exactly like CheXOne.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-VL's control tokens, in Qwen's order; ids follow right after the trained vocabulary.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# The grounding markup CheXOne writes. Added as whole (non-special) tokens so that decoding keeps
# them and the random model can emit them in one piece.
MARKUP_TOKENS = ("<|ref|>", "<|/ref|>", "<|box|>", "<|/box|>")

VOCAB_SIZE = 1024  # trained BPE vocabulary before the added tokens
TINY_DIR_NAME = "tiny-qwen2.5-vl"
MARKER_FILE = "raddraft-tiny.json"

_CORPUS = (
    "You are a helpful assistant. You are a helpful radiology assistant to help radiologists "
    "analyze, interpret medical images and answer clinical questions. ",
    "Write an example findings section for the CXR. Write an example impression section for the "
    "CXR. Summarize the following Findings: Given the indication: write a structured findings "
    "section for the CXR. Write the trajectory of findings by comparing the second image to the "
    "first one. What is the view of this chest X-ray? Options: (a) PA (b) AP (c) LATERAL ",
    "Please locate the following phrase: Locate areas in the chest X-ray where is present, using "
    "bounding box coordinates. Output format: target name Example: pneumothorax (12,60),(18,87) ",
    "Please reason step by step, and put your final answer within \\boxed{}. ",
    "No pneumothorax detected. No pleural effusion. The lungs are clear. Heart size is normal. "
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis. Right lower lobe "
    "consolidation concerning for pneumonia. Endotracheal tube terminates 4 cm above the carina. ",
    "Enlarged Cardiomediastinum Cardiomegaly Lung Opacity Lung Lesion Edema Consolidation "
    "Pneumonia Atelectasis Pneumothorax Pleural Effusion Pleural Other Fracture Support Devices ",
    "worsening stable improving Yes No (A) (B) (C) right left bilateral upper middle lower lobe "
    "apex base costophrenic angle hilum mediastinum diaphragm 0123456789 , . : ; ( ) [ ] { } ",
    "**Thinking Process:** 1. 2. 3. **Final Answer:** $$\\boxed{C}$$ follow-up recommended. ",
)


def _train_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained on a few hundred words of radiology and prompts."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    return tokenizer


def build_tiny(path: str | Path, *, seed: int = 0, init_range: float = 0.5) -> Path:
    """Build and save the tiny checkpoint into ``path`` (created); returns the path.

    Takes a few seconds on a CPU and a few MB on disk. ``seed`` fixes the random weights, so two
    builds with the same seed load to the same model.
    """
    import torch
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)

    raw = _train_tokenizer()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    ids = {t: raw.token_to_id(t) for t in SPECIAL_TOKENS}
    vocab_size = raw.get_vocab_size(with_added_tokens=True)

    text_config: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "initializer_range": init_range,
        # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width)
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [2, 3, 3],
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision_config: dict[str, Any] = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
        "initializer_range": init_range,
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():
        # Every matrix redrawn from N(0, init_range), each from its own seeded generator, so a
        # build is reproducible whatever post_init drew; norms stay at 1. The large range keeps
        # logits far apart, so the argmax follows the input instead of one constant token.
        for offset, param in enumerate(p for p in model.parameters() if p.dim() >= 2):
            generator = torch.Generator().manual_seed(seed * 100_003 + offset)
            param.normal_(0.0, init_range, generator=generator)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(target, safe_serialization=True)

    image_processor = Qwen2VLImageProcessor(size=pixel_bounds(56 * 56, 512 * 512))
    video_processor = Qwen2VLVideoProcessor()
    processor = Qwen2_5_VLProcessor(  # type: ignore[no-untyped-call]
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(target)
    (target / MARKER_FILE).write_text(
        json.dumps({"builder": "raddraft", "seed": seed, "demo": True}, indent=2) + "\n"
    )
    return target


def is_tiny_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a checkpoint that :func:`build_tiny` made."""
    return (Path(path) / MARKER_FILE).is_file()

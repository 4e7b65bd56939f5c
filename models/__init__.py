"""RadDraft's model side: chest X-ray images and text in, a typed staged reading out.

This package imports no other RadDraft folder; its configuration comes in as a
:class:`ReaderConfig` (the worker fills it from settings).

Public API
----------
``load_reader(config: ReaderConfig) -> Reader``
    Loads the model once per process (``config.model``: ``auto`` | ``tiny`` | hub id | folder) and
    returns a reader. Raises :class:`ModelLoadError` with a plain message when a model named
    explicitly cannot be loaded. ``auto`` falls back to the tiny random-weight demo model.
``Reader.read(current: list[StudyImage], prior: list[StudyImage] | None = None,
indication: str | None = None, prior_report: str | None = None, on_draft=None) -> Reading``
    The eight-stage CXRTrek reading and (``report_source=single_turn``, the default) the report
    texts asked in CheXOne's trained single-turn form; the turns the draft needs run first and
    ``on_draft(reading)`` is called then. Thread-safe; concurrent readings run at once on both
    backends (the transformers one batches their turns in one engine).
    ``Reader.model`` (:class:`ModelInfo`) gives ``model_id``, ``revision``, ``backend``,
    ``demo`` and ``label`` (the demo warning text).
``Reading``
    Per stage the questions, answers, reasoning, tokens and timings; findings with boxes in
    stored-pixel coordinates (and the SOP Instance UID of their image); findings text,
    impression, progression, view, quality warnings; ``reading.demo``; ``to_json()``.
``StudyImage.from_dataset(ds)`` / ``StudyImage.from_path(path)``
    An input image (pydicom Dataset, DICOM file, or a PNG/JPEG picture).
``prepare_image(dataset) -> (PIL.Image, Geometry)``
    The model's view of a DICOM image; :class:`Geometry` maps boxes between model percent or
    model pixels and stored pixels.
``build_tiny(path)``, ``resolve_model(name, data_dir)``, ``load_backend(config)``
    The demo checkpoint, model selection, and the raw backend (:class:`Backend` protocol:
    ``generate(Conversation, DecodeOptions) -> Generation``) for tools and benchmarks.

Everything heavy (torch, transformers) is imported on first use, not on ``import models``.
"""

from __future__ import annotations

import dataclasses

from models._backend import (
    Backend,
    Conversation,
    DecodeOptions,
    Generation,
    Message,
    ModelLoadError,
)
from models._images import Geometry, prepare_image, prepare_pil, smart_resize
from models._parse import parse_boxes, parse_choice, split_reasoning
from models._resolve import ModelChoice, cached_backend, load_backend, resolve_model, tiny_path
from models._staged_reading import Reader
from models._tiny import build_tiny
from models._types import (
    CHEXONE_ID,
    DEMO_LABEL,
    PROGRAM_VERSION,
    Box,
    Finding,
    ImageInfo,
    ModelInfo,
    ReaderConfig,
    Reading,
    StageResult,
    StudyImage,
    Turn,
)

#: The default of ``ReaderConfig.demo_max_new_tokens`` (the worker passes the setting).
DEMO_MAX_NEW_TOKENS = ReaderConfig.demo_max_new_tokens


def load_reader(config: ReaderConfig) -> Reader:
    """A :class:`Reader` for ``config``; the model itself is loaded once per process.

    The demo model answers at most ``config.demo_max_new_tokens`` tokens per question, in
    either mode.
    """
    backend, info = cached_backend(config)
    cap = config.demo_max_new_tokens
    if info.demo and config.max_new_tokens > cap:
        config = dataclasses.replace(config, max_new_tokens=cap)
    if info.demo and config.max_new_tokens_reasoning > cap:
        config = dataclasses.replace(config, max_new_tokens_reasoning=cap)
    return Reader(backend, config, info)


__all__ = [
    "CHEXONE_ID",
    "DEMO_LABEL",
    "DEMO_MAX_NEW_TOKENS",
    "PROGRAM_VERSION",
    "Backend",
    "Box",
    "Conversation",
    "DecodeOptions",
    "Finding",
    "Generation",
    "Geometry",
    "ImageInfo",
    "Message",
    "ModelChoice",
    "ModelInfo",
    "ModelLoadError",
    "Reader",
    "ReaderConfig",
    "Reading",
    "StageResult",
    "StudyImage",
    "Turn",
    "build_tiny",
    "cached_backend",
    "load_backend",
    "load_reader",
    "parse_boxes",
    "parse_choice",
    "prepare_image",
    "prepare_pil",
    "resolve_model",
    "smart_resize",
    "split_reasoning",
    "tiny_path",
]

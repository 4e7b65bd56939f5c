"""Which model to load, and loading it once per process.

``auto`` must work on a fresh offline machine: it looks for CheXOne in the local Hugging Face
cache only (``local_files_only``, no network), then on the hub only if the hub answers within a
few seconds, and otherwise builds the tiny demo model. A model named explicitly either loads or
stops with a message saying what failed and how to point ``RADDRAFT_MODEL`` at a local copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from models._backend import Backend, ModelLoadError
from models._tiny import TINY_DIR_NAME, build_tiny, is_tiny_checkpoint
from models._types import CHEXONE_ID, ModelInfo, ReaderConfig

log = logging.getLogger(__name__)

_HUB_PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class ModelChoice:
    """Where a model comes from: a folder or hub id, and whether it is the demo model."""

    source: str
    model_id: str
    demo: bool
    explicit: bool  # named by the user (must load) rather than tried by ``auto``


def tiny_path(data_dir: Path) -> Path:
    """Where ``tiny`` lives: ``<data_dir>/models/tiny-qwen2.5-vl``."""
    return Path(data_dir) / "models" / TINY_DIR_NAME


def ensure_tiny(data_dir: Path) -> Path:
    """The tiny checkpoint in the data directory, built on first use."""
    path = tiny_path(data_dir)
    if not is_tiny_checkpoint(path):
        log.warning("building the tiny demo model (random weights) in %s", path)
        # Built aside and renamed into place, so a second process starting at the same moment
        # never loads a half-written folder.
        scratch = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        if scratch.exists():
            shutil.rmtree(scratch)
        build_tiny(scratch)
        try:
            if path.exists() and not is_tiny_checkpoint(path):
                shutil.rmtree(path)  # a leftover from an interrupted older build
            os.rename(scratch, path)
        except OSError:
            if not is_tiny_checkpoint(path):
                raise
            shutil.rmtree(scratch, ignore_errors=True)  # another process won the race
    return path


def resolve_model(name: str, data_dir: Path) -> ModelChoice:
    """Turn a ``RADDRAFT_MODEL`` value into a :class:`ModelChoice` (``auto`` resolves on load)."""
    if name == "tiny":
        path = ensure_tiny(data_dir)
        return ModelChoice(str(path), "raddraft/tiny-qwen2.5-vl", demo=True, explicit=True)
    if name == "auto":
        return ModelChoice(CHEXONE_ID, CHEXONE_ID, demo=False, explicit=False)
    path = Path(name).expanduser()
    if path.exists():
        demo = is_tiny_checkpoint(path)
        model_id = "raddraft/tiny-qwen2.5-vl" if demo else str(path.resolve())
        return ModelChoice(str(path.resolve()), model_id, demo=demo, explicit=True)
    return ModelChoice(name, name, demo=False, explicit=True)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _hub_answers(repo_id: str) -> bool:
    """Whether the hub knows ``repo_id`` and answers quickly (never blocks for long)."""
    if _offline():
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, timeout=_HUB_PROBE_SECONDS)
        return True
    except Exception as error:  # no network, no access, no such repo: all mean "not from the hub"
        log.info("hub not reachable for %s: %s", repo_id, error)
        return False


def _help(source: str, error: Exception) -> str:
    return (
        f"{error}\nRADDRAFT_MODEL={source!r} could not be loaded. On a machine with network, "
        f"download it (huggingface-cli download {source} --local-dir /models/chexone), copy the "
        "folder here and set RADDRAFT_MODEL=/models/chexone; or set RADDRAFT_MODEL=tiny for the "
        "random-weight demo model."
    )


def _load_transformers(choice: ModelChoice, config: ReaderConfig, *, local_only: bool) -> Backend:
    from models._hf import TransformersBackend

    return TransformersBackend.load(
        choice.source,
        device=config.device,
        dtype=config.dtype,
        revision=config.revision,
        local_files_only=local_only,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
        prefix_cache=config.prefix_cache,
        model_id=choice.model_id,
        kv_cache_gib=config.kv_cache_gib,
    )


def load_backend(config: ReaderConfig) -> tuple[Backend, ModelInfo]:
    """Load the configured model and say what it is. Raises :class:`ModelLoadError`."""
    if config.backend == "openai":
        from models._openai import OpenAIBackend

        model_id = CHEXONE_ID if config.model in ("auto", "") else config.model
        server = OpenAIBackend(
            config.server_url,
            model_id,
            timeout_seconds=config.server_timeout_seconds,
            revision=config.revision,
        )
        return server, ModelInfo(
            model_id, config.revision, demo=False, backend="openai", source=server.url
        )
    choice = resolve_model(config.model, config.data_dir)
    if not choice.explicit:
        try:
            backend = _load_transformers(choice, config, local_only=True)
            return backend, _info(backend, choice)
        except ModelLoadError as error:
            log.info("CheXOne is not in the local cache: %s", error)
        if _hub_answers(choice.source):
            try:
                backend = _load_transformers(choice, config, local_only=False)
                return backend, _info(backend, choice)
            except ModelLoadError as error:
                log.warning("CheXOne could not be loaded from the hub: %s", error)
        tiny = ModelChoice(
            str(ensure_tiny(config.data_dir)), "raddraft/tiny-qwen2.5-vl", demo=True, explicit=True
        )
        log.warning("DEMO MODE: CheXOne is not available; using the tiny random-weight model")
        backend = _load_transformers(tiny, config, local_only=True)
        return backend, _info(backend, tiny)
    local = Path(choice.source).exists()
    try:
        backend = _load_transformers(choice, config, local_only=True)
    except ModelLoadError as error:
        if local or not _hub_answers(choice.source):
            raise ModelLoadError(_help(choice.source, error)) from error
        try:
            backend = _load_transformers(choice, config, local_only=False)
        except ModelLoadError as second:
            raise ModelLoadError(_help(choice.source, second)) from second
    return backend, _info(backend, choice)


def _info(backend: Backend, choice: ModelChoice) -> ModelInfo:
    revision = backend.revision
    if choice.demo and revision is None:
        revision = "tiny-random"
    return ModelInfo(
        choice.model_id, revision, demo=choice.demo, backend="transformers", source=choice.source
    )


_LOADED: dict[tuple[object, ...], tuple[Backend, ModelInfo]] = {}
_LOADED_LOCK = threading.Lock()


def cached_backend(config: ReaderConfig) -> tuple[Backend, ModelInfo]:
    """:func:`load_backend`, once per process for each model/device/dtype/backend combination."""
    key = (
        config.backend,
        config.model,
        str(config.data_dir),
        config.device,
        config.dtype,
        config.server_url,
        config.revision,
        config.prefix_cache,
        config.min_pixels,
        config.max_pixels,
        config.kv_cache_gib,
    )
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = load_backend(config)
        return _LOADED[key]

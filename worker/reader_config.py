"""Settings -> :class:`models.ReaderConfig`: the one mapping, for the worker and ``raddraft draft``.

``models/`` never reads settings (it imports no RadDraft folder); whoever loads a reader asks
this module for its configuration, so the command line reads a study exactly as the worker
does (the same report source, reasoning stages, token limits and consistency sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import models
import report_drafts
from raddraft.settings import Settings

__all__ = ["SETTING_OF_FIELD", "reader_config"]


def _same(value: Any) -> Any:
    return value


#: ReaderConfig field -> (the Settings field it comes from, how its value is converted).
#: Fields without a setting (``prefix_cache``, ``branch_stages``, ``seed`` ...) keep models'
#: defaults; ``tests/worker/test_reader_config.py`` checks that every field that has a
#: setting of its name (or ``model_<name>``) is listed here.
SETTING_OF_FIELD: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "model": ("model", _same),
    "data_dir": ("data_dir", _same),
    "backend": ("model_backend", _same),
    "device": ("model_device", _same),
    "dtype": ("model_dtype", _same),
    "server_url": ("model_server_url", _same),
    "reasoning_stages": ("reasoning_stages", frozenset),
    "max_new_tokens": ("max_new_tokens", _same),
    "demo_max_new_tokens": ("demo_max_new_tokens", _same),
    "max_new_tokens_reasoning": ("max_new_tokens_reasoning", _same),
    "report_source": ("report_source", _same),
    "consistency_samples": ("consistency_samples", _same),
    "consistency_temperature": ("consistency_temperature", _same),
    "consistency_labels": ("consistency_labels", tuple),
    "kv_cache_gib": ("model_kv_cache_gib", _same),
}


def reader_config(settings: Settings, **overrides: Any) -> models.ReaderConfig:
    """The reader's configuration for these settings; keyword arguments override fields
    (``raddraft draft --max-new-tokens``)."""
    values: dict[str, Any] = {
        field: convert(getattr(settings, name))
        for field, (name, convert) in SETTING_OF_FIELD.items()
    }
    # The labels asked about come from the one coded vocabulary, not models' own default.
    values["findings_vocabulary"] = report_drafts.finding_labels()
    values.update(overrides)
    return models.ReaderConfig(**values)

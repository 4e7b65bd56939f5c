"""One mapping from settings to the reader's configuration, for the worker and ``raddraft draft``.

The command used to build its own ReaderConfig from 9 settings while the worker mapped 14, so
``raddraft draft`` ignored ``RADDRAFT_REPORT_SOURCE`` and the consistency settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import models
from raddraft.commands import model as model_command
from raddraft.settings import Settings, get_settings
from tests.dicom_factory import make_cxr
from worker import pipeline
from worker.reader_config import SETTING_OF_FIELD, reader_config

#: A value unlike the default for every setting the mapping reads.
NOT_DEFAULT: dict[str, Any] = {
    "model": "tiny",
    "model_backend": "openai",
    "model_device": "cpu",
    "model_dtype": "float32",
    "model_server_url": "http://127.0.0.1:9/v1",
    "reasoning_stages": [3, 8],
    "max_new_tokens": 77,
    "demo_max_new_tokens": 5,
    "max_new_tokens_reasoning": 99,
    "report_source": "staged",
    "consistency_samples": 4,
    "consistency_temperature": 0.3,
    "consistency_labels": ["Pneumothorax"],
    "model_kv_cache_gib": 1.5,
}


def test_every_field_with_a_setting_is_mapped() -> None:
    settings_fields = set(Settings.model_fields)
    with_setting = {
        f.name
        for f in dataclasses.fields(models.ReaderConfig)
        if f.name in settings_fields or f"model_{f.name}" in settings_fields
    }
    assert with_setting <= set(SETTING_OF_FIELD), with_setting - set(SETTING_OF_FIELD)
    assert {name for name, _ in SETTING_OF_FIELD.values()} <= settings_fields


def test_every_mapped_setting_reaches_the_config(tmp_path: Path) -> None:
    defaults = reader_config(Settings(data_dir=tmp_path))
    config = reader_config(Settings(data_dir=tmp_path, **NOT_DEFAULT))
    assert set(NOT_DEFAULT) | {"data_dir"} == {name for name, _ in SETTING_OF_FIELD.values()}
    for field in SETTING_OF_FIELD:
        if field != "data_dir":
            assert getattr(config, field) != getattr(defaults, field), field
    assert config.reasoning_stages == frozenset({3, 8})
    assert config.consistency_labels == ("Pneumothorax",)
    assert config.backend == "openai" and config.report_source == "staged"


def test_the_worker_and_the_command_load_the_same_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in NOT_DEFAULT.items():
        shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        monkeypatch.setenv(f"RADDRAFT_{name.upper()}", shown)
    monkeypatch.setenv("RADDRAFT_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    loaded: list[models.ReaderConfig] = []

    def fake_load_reader(config: models.ReaderConfig) -> Any:
        loaded.append(config)
        raise models.ModelLoadError("stop here")

    monkeypatch.setattr(models, "load_reader", fake_load_reader)
    monkeypatch.setattr(pipeline, "_reader", None)
    study = tmp_path / "a.dcm"
    make_cxr(rows=64, cols=64, seed=1).save_as(study, enforce_file_format=True)
    try:
        result = CliRunner().invoke(model_command.draft, [str(study)])
        assert result.exit_code != 0 and "stop here" in result.output
        with pytest.raises(models.ModelLoadError):
            pipeline.load_reader(get_settings())
    finally:
        get_settings.cache_clear()
    command, worker = loaded
    assert command == worker
    assert command.report_source == "staged" and command.consistency_samples == 4

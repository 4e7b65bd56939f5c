"""Model selection: auto falls back to the demo model offline, tiny builds on first use, a
named model that cannot load stops with a plain message; and the ``raddraft`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import models._resolve as resolve
from models import ModelLoadError, ReaderConfig, load_backend, resolve_model
from models._tiny import is_tiny_checkpoint
from tests.models.conftest import radiograph


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No CheXOne anywhere: an empty Hugging Face cache, offline."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_tiny_builds_once_into_the_data_dir(
    tmp_path: Path, tiny_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Path] = []

    def fake_build(path: Path, **kwargs: object) -> Path:
        # Copy the session's checkpoint instead of building again (same files, no time).
        import shutil

        built.append(path)
        shutil.copytree(tiny_path, path)
        return path

    monkeypatch.setattr(resolve, "build_tiny", fake_build)
    choice = resolve_model("tiny", tmp_path)
    assert choice.demo and choice.explicit
    assert Path(choice.source) == tmp_path / "models" / "tiny-qwen2.5-vl"
    assert is_tiny_checkpoint(choice.source)
    resolve_model("tiny", tmp_path)
    assert len(built) == 1
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]


def test_auto_without_chexone_is_the_demo_model(
    tmp_path: Path, tiny_path: Path, empty_hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resolve, "ensure_tiny", lambda data_dir: tiny_path)
    probes: list[str] = []
    monkeypatch.setattr(resolve, "_hub_answers", lambda repo: probes.append(repo) or False)
    backend, info = load_backend(ReaderConfig(model="auto", data_dir=tmp_path, device="cpu"))
    assert info.demo and info.label == "demo model, random weights, not a clinical draft"
    assert info.model_id == "raddraft/tiny-qwen2.5-vl" and info.revision
    assert probes == ["StanfordAIMI/CheXOne"]
    assert backend.model_id == "raddraft/tiny-qwen2.5-vl"


def test_offline_hub_probe_returns_at_once(empty_hf_cache: Path) -> None:
    assert resolve._hub_answers("StanfordAIMI/CheXOne") is False


def test_named_model_that_cannot_load_says_what_to_do(tmp_path: Path, empty_hf_cache: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_backend(ReaderConfig(model="StanfordAIMI/CheXOne", data_dir=tmp_path))
    message = str(caught.value)
    assert "StanfordAIMI/CheXOne" in message and "RADDRAFT_MODEL=" in message
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_backend(ReaderConfig(model=str(broken), data_dir=tmp_path))


def test_named_folder_of_tiny_is_demo(tmp_path: Path, tiny_path: Path) -> None:
    choice = resolve_model(str(tiny_path), tmp_path)
    assert choice.demo and choice.explicit and choice.source == str(tiny_path.resolve())
    assert resolve_model("some/hub-model", tmp_path).demo is False


def test_cached_backend_loads_once(tmp_path: Path, tiny_path: Path) -> None:
    from models import load_reader

    config = ReaderConfig(model=str(tiny_path), data_dir=tmp_path, device="cpu")
    first, second = load_reader(config), load_reader(config)
    assert first.backend is second.backend and first.demo


def test_build_tiny_command(tmp_path: Path) -> None:
    from raddraft.commands.model import model

    target = tmp_path / "tiny"
    result = CliRunner().invoke(model, ["build-tiny", str(target)])
    assert result.exit_code == 0, result.output
    assert is_tiny_checkpoint(target) and (target / "model.safetensors").is_file()


def test_draft_command_prints_json(
    tmp_path: Path, tiny_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raddraft.commands.model import draft
    from tests.conftest import reload_settings

    study = tmp_path / "study"
    study.mkdir()
    ds = radiograph(120, 100, (10, 10, 40, 50))
    ds.save_as(study / "a.dcm", enforce_file_format=True)
    (study / "notes.txt").write_text("not dicom")
    prior = tmp_path / "prior.dcm"
    radiograph(110, 100, (10, 10, 40, 50)).save_as(prior, enforce_file_format=True)
    monkeypatch.setenv("RADDRAFT_MODEL", str(tiny_path))
    monkeypatch.setenv("RADDRAFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RADDRAFT_MODEL_DEVICE", "cpu")
    monkeypatch.setenv("RADDRAFT_REASONING_STAGES", "8")
    reload_settings()
    try:
        result = CliRunner().invoke(
            draft,
            [
                str(study),
                "--prior",
                str(prior),
                "--json",
                "--max-new-tokens",
                "3",
                "--indication",
                "cough",
            ],
        )
        assert result.exit_code == 0, result.output
        out = result.stdout
        data = json.loads(out[out.index("{") :])
        assert data["demo"] is True
        assert data["images"][0]["sop_instance_uid"] == ds.SOPInstanceUID
        assert data["settings"]["reasoning_stages"] == [8]
        assert data["stages"][4]["skipped"] is False
        assert "skipping" in result.stderr and "notes.txt" in result.stderr
        assert "demo model" in result.stderr
        plain = CliRunner().invoke(draft, [str(study / "a.dcm"), "--max-new-tokens", "2"])
        assert plain.exit_code == 0, plain.output
        assert "DEMO MODEL, RANDOM WEIGHTS" in plain.stdout and "stage 5" in plain.stdout
    finally:
        reload_settings()


def test_demo_model_answers_briefly(tmp_path: Path, tiny_path: Path) -> None:
    """Random weights write noise to the limit; demo mode caps it, a real model keeps its own."""
    from models import DEMO_MAX_NEW_TOKENS, load_reader

    reader = load_reader(ReaderConfig(model=str(tiny_path), data_dir=tmp_path, max_new_tokens=512))
    assert reader.model.demo and reader.config.max_new_tokens == DEMO_MAX_NEW_TOKENS
    short = load_reader(ReaderConfig(model=str(tiny_path), data_dir=tmp_path, max_new_tokens=8))
    assert short.config.max_new_tokens == 8

"""From settings to a reading to the draft's content: the single-turn report texts, the
confidence as the finding's certainty, cut answers flagged, and the gpu worker's pool."""

from __future__ import annotations

from pathlib import Path

import pytest

import models
from raddraft.settings import Settings
from tests.dicom_factory import make_cxr
from tests.worker.model_server import ScriptedModelServer
from worker import pipeline
from worker.process import worker_pool
from worker.reader_config import reader_config


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_settings_reach_the_reader_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = reader_config(settings(tmp_path))
    assert defaults.report_source == "single_turn" and defaults.consistency_samples == 0
    assert defaults.max_new_tokens_reasoning == 2048
    monkeypatch.setenv("RADDRAFT_CONSISTENCY_LABELS", "Pleural Effusion, Pneumothorax")
    monkeypatch.setenv("RADDRAFT_CONSISTENCY_SAMPLES", "8")
    monkeypatch.setenv("RADDRAFT_MAX_NEW_TOKENS_REASONING", "1024")
    monkeypatch.setenv("RADDRAFT_REPORT_SOURCE", "staged")
    config = reader_config(Settings(data_dir=tmp_path))
    assert config.consistency_labels == ("Pleural Effusion", "Pneumothorax")
    assert config.consistency_samples == 8 and config.consistency_temperature == 0.7
    assert config.max_new_tokens == 512 and config.max_new_tokens_reasoning == 1024
    assert config.report_source == "staged"


def test_reading_to_draft_content(tmp_path: Path) -> None:
    with ScriptedModelServer() as server:
        config = reader_config(
            settings(
                tmp_path,
                model_backend="openai",
                model_server_url=server.url,
                model="StanfordAIMI/CheXOne",
                consistency_samples=3,
                consistency_labels=["Pleural Effusion"],
            )
        )
        reader = models.load_reader(config)
        current = models.StudyImage.from_dataset(make_cxr(rows=300, cols=260, seed=1))
        prior = models.StudyImage.from_dataset(make_cxr(rows=300, cols=260, seed=2))
        reading = reader.read([current], [prior])
    # The report's texts are the single-turn answers, asked under the stock system prompt.
    assert (
        reading.findings_text
        == "Moderate left pleural effusion. Heart size normal. No pneumothorax."
    )
    assert reading.progression_text == "The left pleural effusion has increased."
    single = [
        b for b in server.requests if b["messages"][0]["content"] == "You are a helpful assistant."
    ]
    assert len(single) == len(reading.report_turns) == 4  # findings, impression, 1 box, progression
    assert all(len(b["messages"]) == 2 for b in single)  # system + one user turn
    sampled = [b for b in server.requests if b.get("n", 1) == 3]
    assert len(sampled) == 1 and "pleural effusion" in str(sampled[0]["messages"][-1]["content"])

    content = pipeline.report_content(reading, study_version_uid="1.2.3.v1")
    (effusion,) = content.findings
    assert effusion.label == "Pleural Effusion" and effusion.box is not None
    assert effusion.certainty == pytest.approx(1.0)  # SR and page show it when present
    assert content.extra["report_source"] == "single_turn"
    assert content.extra["text_sources"]["findings_text"].startswith("single-turn findings: ")
    assert content.extra["staged_report"]["findings_text"] == reading.staged_report["findings_text"]
    assert content.extra["truncated"] == []

    rows = pipeline.stage_rows(reading)
    report_rows = [r for r in rows if r["stage"] == pipeline.REPORT_STAGE]
    assert [r["kind"] for r in report_rows] == [
        "findings",
        "impression",
        "grounding",
        "progression",
    ]
    assert all(r["conversation"] == "single-turn" for r in report_rows)
    assert all(
        r["conversation"] == "cxrtrek"
        for r in rows
        if r["stage"] != pipeline.REPORT_STAGE and "kind" in r
    )


def test_cut_answers_reach_the_draft(tmp_path: Path) -> None:
    reading = models.Reading(
        model=models.ModelInfo("m", None, False, "test", "-"),
        settings={},
        program_version="x",
        images=[],
        stages=[],
        findings=[],
        truncated=["single-turn findings: cut at 512 tokens, incomplete"],
    )
    content = pipeline.report_content(reading, study_version_uid="1.2.3.v1")
    assert content.extra["truncated"] == ["single-turn findings: cut at 512 tokens, incomplete"]


def test_gpu_worker_pool(tmp_path: Path) -> None:
    assert worker_pool(settings(tmp_path), ["gpu"], 4) == ("solo", 1)
    many = settings(tmp_path, studies_in_flight=16, model_backend="openai")
    assert worker_pool(many, ["gpu"], 4) == ("threads", 16)
    assert worker_pool(many, ["io"], 4) == ("prefork", 4)

"""``raddraft web`` hands what it built at start to the collector's permanent generation
(issue 23): a full collection walked the 200,000 objects of the imports and the app every few
dozen allocating requests, about 0.1 s each, the p95 of a FHIR page of fifty resources."""

from __future__ import annotations

import gc

import pytest
import uvicorn
from click.testing import CliRunner

from raddraft.cli import main
from raddraft.settings import Settings


def test_the_web_command_freezes_what_it_built_before_serving(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen: list[int] = []

    def serve(_server: uvicorn.Server) -> None:
        frozen.append(gc.get_freeze_count())

    monkeypatch.setenv("RADDRAFT_WEB_SECRET", "test-secret-not-for-production")
    monkeypatch.setattr(uvicorn.Server, "run", serve)
    gc.unfreeze()
    try:
        result = CliRunner().invoke(main, ["web", "--port", "1"])
    finally:
        gc.unfreeze()
    assert result.exit_code == 0, result.output
    assert frozen and frozen[0] > 100_000  # the app, its routes, fastapi, pydantic, FHIR models

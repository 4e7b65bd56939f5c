"""``raddraft router`` is the router's command; ``dispatcher``, its old name, is gone (the
exporter is what sends results, so a command named for dispatching misled)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from raddraft.cli import main
from raddraft.commands import worker as commands


def test_router_is_listed_and_the_old_name_is_gone() -> None:
    listing = CliRunner().invoke(main, ["--help"])
    assert listing.exit_code == 0, listing.output
    names = [line.split()[0] for line in listing.output.splitlines() if line.startswith("  ")]
    assert "router" in names
    assert "dispatcher" not in names
    assert main.get_command(click.Context(main), "dispatcher") is None


def test_router_runs_the_router(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[str] = []
    monkeypatch.setattr(commands, "_run_router", lambda: runs.append("router"))
    result = CliRunner().invoke(main, ["router"])
    assert result.exit_code == 0, result.output
    assert runs == ["router"]
    assert CliRunner().invoke(main, ["dispatcher"]).exit_code != 0

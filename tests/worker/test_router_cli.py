"""``raddraft router`` is the router's command; ``dispatcher``, its old name, still starts it."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from raddraft.cli import main
from raddraft.commands import worker as commands


def test_router_is_listed_and_the_old_name_is_hidden() -> None:
    listing = CliRunner().invoke(main, ["--help"])
    assert listing.exit_code == 0, listing.output
    names = [line.split()[0] for line in listing.output.splitlines() if line.startswith("  ")]
    assert "router" in names
    assert "dispatcher" not in names
    alias = main.get_command(click.Context(main), "dispatcher")
    assert alias is not None and alias.hidden


@pytest.mark.parametrize("name", ["router", "dispatcher"])
def test_both_names_run_the_router(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[str] = []
    monkeypatch.setattr(commands, "_run_router", lambda: runs.append(name))
    result = CliRunner().invoke(main, [name])
    assert result.exit_code == 0, result.output
    assert runs == [name]

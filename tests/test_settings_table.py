"""The README's settings table and ``raddraft settings`` both come from the one settings object:
every setting in the table, every row a setting, the defaults the same, every field described."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from raddraft.cli import main
from raddraft.settings import Settings, describe

README = Path(__file__).resolve().parents[1] / "README.md"
VARIABLE = re.compile(r"`(RADDRAFT_[A-Z0-9_]+)`")
CODE = re.compile(r"`([^`]*)`")


def table_rows() -> list[tuple[list[str], list[str]]]:
    """(variables, backticked defaults) of each row of the README's settings table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not VARIABLE.search(cells[0]):
            continue
        rows.append((VARIABLE.findall(cells[0]), CODE.findall(cells[1])))
    return rows


def table_defaults() -> dict[str, str]:
    """Each documented variable's default as the table writes it ("" for an empty one)."""
    found: dict[str, str] = {}
    for variables, defaults in table_rows():
        if len(defaults) not in (0, 1, len(variables)):
            pytest.fail(f"row {variables}: {len(defaults)} defaults for {len(variables)} variables")
        for index, variable in enumerate(variables):
            assert variable not in found, f"{variable} has two rows"
            if not defaults:
                found[variable] = ""
            else:
                found[variable] = defaults[index if len(defaults) > 1 else 0]
    return found


def test_every_setting_has_a_row_and_every_row_is_a_setting() -> None:
    documented = set(table_defaults())
    settings = {f"RADDRAFT_{name.upper()}" for name in Settings.model_fields}
    assert sorted(settings - documented) == [], "settings missing from the README table"
    assert sorted(documented - settings) == [], "README rows that are no setting"


def test_the_table_defaults_are_the_settings_defaults() -> None:
    documented = table_defaults()
    defaults = {row.variable: row.default for row in describe(Settings())}
    wrong = {v: (documented[v], defaults[v]) for v in documented if documented[v] != defaults[v]}
    assert wrong == {}, "README default vs settings default"


def test_every_field_says_what_it_means() -> None:
    assert [name for name, f in Settings.model_fields.items() if not f.description] == []


def test_the_rule_catches_a_wrong_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # a stale default must fail, not pass because the parser skipped the row
    row = "| `RADDRAFT_DICOM_PORT` | `104` | the listener's port |"
    monkeypatch.setattr(
        Path, "read_text", lambda _self, encoding="utf-8": f"x\n## Settings\n{row}\n## Next\n"
    )
    assert table_defaults() == {"RADDRAFT_DICOM_PORT": "104"}
    assert describe(Settings())[5].variable == "RADDRAFT_DICOM_PORT"
    assert describe(Settings())[5].default == "11112"


def test_raddraft_settings_prints_value_default_and_meaning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RADDRAFT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RADDRAFT_INSTITUTION_NAME", "St Elsewhere")
    monkeypatch.setenv("RADDRAFT_WEB_SECRET", "very-secret-value")
    monkeypatch.setenv("RADDRAFT_DATABASE_URL", "postgresql+psycopg://u:pw123@db/raddraft")
    from tests.conftest import reload_settings

    reload_settings()
    try:
        result = CliRunner().invoke(main, ["settings"])
        listed = CliRunner().invoke(main, ["settings", "--json"])
        changed = CliRunner().invoke(main, ["settings", "--changed", "--json"])
    finally:
        monkeypatch.undo()
        reload_settings()
    assert result.exit_code == 0, result.output
    for name, field in Settings.model_fields.items():
        assert f"RADDRAFT_{name.upper()}=" in result.output
        assert str(field.description) in result.output
    assert "RADDRAFT_INSTITUTION_NAME=St Elsewhere  (default: RadDraft Hospital)" in result.output
    assert "very-secret-value" not in result.output and "pw123" not in result.output
    rows = {row["variable"]: row for row in json.loads(listed.output)}
    assert len(rows) == len(Settings.model_fields)
    assert rows["RADDRAFT_DICOM_PORT"] == {
        "variable": "RADDRAFT_DICOM_PORT",
        "value": "11112",
        "default": "11112",
        "meaning": "the listener's port",
    }
    assert {r["variable"] for r in json.loads(changed.output)} >= {
        "RADDRAFT_INSTITUTION_NAME",
        "RADDRAFT_WEB_SECRET",
        "RADDRAFT_DATA_DIR",
    }
    assert "RADDRAFT_DICOM_PORT" not in {r["variable"] for r in json.loads(changed.output)}


def test_changed_lists_only_what_the_user_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--changed`` is what the environment or ``.env`` set, not the data dir, database and
    broker derived from defaults (issue 22)."""
    import os

    from tests.conftest import reload_settings

    for name in list(os.environ):
        if name.startswith("RADDRAFT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("RADDRAFT_AE_TITLE=FROMDOTENV\n")
    monkeypatch.setenv("RADDRAFT_INSTITUTION_NAME", "St Elsewhere")
    reload_settings()
    try:
        changed = CliRunner().invoke(main, ["settings", "--changed", "--json"])
    finally:
        monkeypatch.undo()
        reload_settings()
    assert changed.exit_code == 0, changed.output
    assert {r["variable"] for r in json.loads(changed.output)} == {
        "RADDRAFT_INSTITUTION_NAME",
        "RADDRAFT_AE_TITLE",
    }

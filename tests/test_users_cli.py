"""``raddraft users add`` offers a password: asked (hidden, twice) on a terminal, read from
``--password-stdin`` in scripts without a GetPassWarning, refused rather than echoed when asked
for without a terminal; and the new user can sign in with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from raddraft.cli import main
from raddraft.commands import users as user_commands
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts.users import user_for_password, user_for_token

ROOT = Path(__file__).resolve().parents[1]


def _can_sign_in(engine: Engine, name: str, password: str) -> bool:
    with session_scope(engine) as session:
        return user_for_password(session, name, password) is not None


def test_password_stdin_in_a_real_pipe_without_getpass_warning(
    settings: Settings, engine: Engine
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raddraft",
            "users",
            "add",
            "curie",
            "--role",
            "radiologist",
            "--password-stdin",
        ],
        input="radium and polonium 1898\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "GetPassWarning" not in proc.stderr and "getpass" not in proc.stderr
    token = proc.stdout.strip()
    assert "sign in at http://127.0.0.1:8080/login with user name and password" in proc.stderr
    assert _can_sign_in(engine, "curie", "radium and polonium 1898")
    assert not _can_sign_in(engine, "curie", "radium and polonium 1898\n")
    with session_scope(engine) as session:
        user = user_for_token(session, token)
        assert user is not None and user.name == "curie"


def test_on_a_terminal_the_password_is_asked_twice_and_again_when_too_short(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(user_commands, "stdin_is_terminal", lambda: True)

    def add(name: str, *typed: str) -> str:
        result = CliRunner().invoke(
            main, ["users", "add", name, "--role", "reader"], input="".join(f"{t}\n" for t in typed)
        )
        assert result.exit_code == 0, result.output
        return result.output

    shown = add("noether", "rings and ideals in 1921", "rings and ideals in 1921")
    assert "rings and ideals in 1921" not in shown  # hidden
    assert "repeat the password" in shown
    assert _can_sign_in(engine, "noether", "rings and ideals in 1921")
    # Two that differ: asked again from the start.
    shown = add("hopper", "a moth in relay 70", "a moth in relay 71", *["a bug in the mark II"] * 2)
    assert "do not match" in shown
    assert _can_sign_in(engine, "hopper", "a bug in the mark II")
    # Too short: refused as typed and asked again, not failed.
    shown = add("franklin", "photo 51", *["photo fifty one, 1952"] * 2)
    assert "15 to 256 characters" in shown
    assert _can_sign_in(engine, "franklin", "photo fifty one, 1952")


def test_without_a_terminal_token_only_and_password_flag_refused(
    settings: Settings, engine: Engine
) -> None:
    plain = CliRunner().invoke(main, ["users", "add", "lovelace", "--role", "reader"])
    assert plain.exit_code == 0, plain.output
    assert "with the API token" in plain.output
    refused = CliRunner().invoke(main, ["users", "add", "turing", "--role", "reader", "--password"])
    assert refused.exit_code != 0
    assert "--password-stdin" in refused.output
    empty = CliRunner().invoke(
        main, ["users", "add", "babbage", "--role", "reader", "--password-stdin"], input=""
    )
    assert empty.exit_code != 0 and "no password line" in empty.output


def _generation(engine: Engine, name: str) -> tuple[int, bool]:
    from sqlalchemy import select

    from report_drafts.tables import User

    with session_scope(engine) as session:
        user = session.scalar(select(User).where(User.name == name))
        assert user is not None
        return user.session_generation, user.active


def test_password_change_and_disable_end_the_users_sessions(
    settings: Settings, engine: Engine
) -> None:
    """``users password`` sets a new password and ``users disable`` disables; both raise the
    session generation, which ends the pages' sessions issued before (issue 20)."""
    added = CliRunner().invoke(
        main,
        ["users", "add", "meitner", "--role", "radiologist", "--password-stdin"],
        input="beta decay and spin\n",
    )
    assert added.exit_code == 0, added.output
    assert _generation(engine, "meitner") == (0, True)
    changed = CliRunner().invoke(
        main,
        ["users", "password", "meitner", "--password-stdin"],
        input="nuclear fission in 1938\n",
    )
    assert changed.exit_code == 0, changed.output
    assert _can_sign_in(engine, "meitner", "nuclear fission in 1938") and not _can_sign_in(
        engine, "meitner", "beta decay and spin"
    )
    assert _generation(engine, "meitner") == (1, True)
    disabled = CliRunner().invoke(main, ["users", "disable", "meitner"])
    assert disabled.exit_code == 0, disabled.output
    assert _generation(engine, "meitner") == (2, False)
    unknown = CliRunner().invoke(
        main, ["users", "password", "nobody", "--password-stdin"], input="x\n"
    )
    assert unknown.exit_code != 0 and "no user" in unknown.output


def test_a_password_too_short_or_too_long_is_refused_and_nothing_changes(
    settings: Settings, engine: Engine
) -> None:
    """NIST SP 800-63B-4: a single-factor password has at least 15 characters; the bound above
    keeps what the server hashes bounded. A refused password creates no user and keeps the old
    password."""
    short = CliRunner().invoke(
        main, ["users", "add", "fermi", "--role", "reader", "--password-stdin"], input="pile-1\n"
    )
    assert short.exit_code != 0 and "15 to 256 characters" in short.output
    unknown = CliRunner().invoke(
        main, ["users", "password", "fermi", "--password-stdin"], input="a long enough phrase\n"
    )
    assert "no user" in unknown.output  # nothing was created
    added = CliRunner().invoke(
        main,
        ["users", "add", "fermi", "--role", "reader", "--password-stdin"],
        input="chicago pile one 1942\n",
    )
    assert added.exit_code == 0, added.output
    for weak in ("x" * 14, "y" * 257):
        refused = CliRunner().invoke(
            main, ["users", "password", "fermi", "--password-stdin"], input=f"{weak}\n"
        )
        assert refused.exit_code != 0 and "15 to 256 characters" in refused.output
    assert _can_sign_in(engine, "fermi", "chicago pile one 1942")
    assert _generation(engine, "fermi") == (0, True)  # the refusals ended no session

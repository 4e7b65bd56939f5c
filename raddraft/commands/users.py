"""``raddraft users``: the people who sign in (add, list, token, disable)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from raddraft.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from report_drafts.tables import User

ROLES = ("reader", "radiologist", "admin", "sender")


@click.group()
def users() -> None:
    """Manage the people who use the review API and pages."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--display-name", default="", help='DICOM person name, "Family^Given".')
@click.option(
    "--password",
    "ask_password",
    is_flag=True,
    default=False,
    help="Ask for a password for the pages' sign-in (on a terminal this is asked anyway).",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    default=False,
    help="Read the password from the first line of standard input (for scripts).",
)
@click.option(
    "--no-password", is_flag=True, default=False, help="Token only: do not ask for a password."
)
def add(
    name: str,
    role: str,
    display_name: str,
    ask_password: bool,
    password_stdin: bool,
    no_password: bool,
) -> None:
    """Add user NAME and print their API token (shown this once only).

    On a terminal you are asked for a password (hidden, typed twice; empty for none) to sign
    in to the pages with; scripts pass it with --password-stdin.
    """
    from raddraft.db import get_engine, session_scope
    from report_drafts.states import InvalidRequest
    from report_drafts.users import add_user

    secret = _new_password(ask=ask_password, from_stdin=password_stdin, never=no_password)
    try:
        with session_scope(get_engine()) as session:
            user, token = add_user(session, name, role, display_name=display_name, password=secret)
            role_name = user.role
    except InvalidRequest as error:
        raise click.ClickException(str(error)) from error
    settings = get_settings()
    url = f"http://{settings.web_host}:{settings.web_port}/login"
    how = "user name and password, or the API token" if secret else "the API token"
    click.echo(f"user {name} ({role_name}) added; API token, shown only now:", err=True)
    click.echo(token)
    click.echo(f"sign in at {url} with {how}", err=True)


def stdin_is_terminal() -> bool:
    """Whether a person can be asked (a password prompt needs a terminal)."""
    return sys.stdin.isatty()


def _new_password(*, ask: bool, from_stdin: bool, never: bool) -> str | None:
    """The new user's password: from stdin, asked on a terminal, or none (token only)."""
    if sum((ask, from_stdin, never)) > 1:
        raise click.UsageError("use one of --password, --password-stdin and --no-password")
    if never:
        return None
    if from_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise click.UsageError("--password-stdin: standard input had no password line")
        return line
    if not stdin_is_terminal():
        if ask:
            # getpass would warn (GetPassWarning) and echo the password: refuse instead.
            raise click.UsageError("not a terminal: pass the password with --password-stdin")
        return None
    secret = click.prompt(
        "password for the pages' sign-in (empty for token only)",
        default="",
        show_default=False,
        hide_input=True,
        confirmation_prompt="repeat the password",
        value_proc=_acceptable,
    )
    return str(secret) or None


def _acceptable(value: str) -> str:
    """A typed password the rules allow, or empty; else asked again (click re-prompts)."""
    from report_drafts.states import InvalidRequest
    from report_drafts.users import check_new_password

    if value:
        try:
            check_new_password(value)
        except InvalidRequest as error:
            raise click.BadParameter(str(error)) from error
    return value


@users.command("list")
def list_users() -> None:
    """List users, their roles and whether they are active."""
    from sqlalchemy import select

    from raddraft.db import get_engine, session_scope
    from report_drafts.tables import User

    with session_scope(get_engine()) as session:
        for user in session.scalars(select(User).order_by(User.name)):
            state = "active" if user.active else "disabled"
            click.echo(f"{user.name}\t{user.role}\t{state}\t{user.display_name}")


@users.command("token")
@click.argument("name")
def token(name: str) -> None:
    """Give NAME a new API token (the old one stops working) and print it once."""
    from raddraft.db import get_engine, session_scope
    from report_drafts.users import rotate_token

    with session_scope(get_engine()) as session:
        user = _user(session, name)
        click.echo(rotate_token(session, user))


@users.command("disable")
@click.argument("name")
def disable(name: str) -> None:
    """Disable NAME: their token and sessions stop working at once."""
    from raddraft.db import get_engine, session_scope
    from report_drafts.users import disable_user

    with session_scope(get_engine()) as session:
        user = _user(session, name)
        disable_user(session, user)
    click.echo(f"user {name} disabled")


@users.command("password")
@click.argument("name")
@click.option(
    "--password-stdin",
    is_flag=True,
    default=False,
    help="Read the new password from the first line of standard input (for scripts).",
)
def password(name: str, password_stdin: bool) -> None:
    """Give NAME a new password for the pages (empty: token only); their sessions end."""
    from raddraft.db import get_engine, session_scope
    from report_drafts.states import InvalidRequest
    from report_drafts.users import set_password

    secret = _new_password(ask=not password_stdin, from_stdin=password_stdin, never=False)
    try:
        with session_scope(get_engine()) as session:
            user = _user(session, name)
            set_password(session, user, secret)
    except InvalidRequest as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"user {name}: password {'set' if secret else 'removed'}, sessions ended")


def _user(session: Session, name: str) -> User:
    """The user called ``name``, or the command's error."""
    from sqlalchemy import select

    from report_drafts.tables import User

    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise click.ClickException(f"no user {name!r}")
    return user

"""``raddraft users``, ``raddraft web`` and ``raddraft trace``: people, the web app, provenance."""

from __future__ import annotations

import logging
import sys

import click

from raddraft.logging import kv
from raddraft.settings import get_settings
from raddraft.tls import server_context

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
    )
    return str(secret) or None


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
    from sqlalchemy import select

    from raddraft.db import get_engine, session_scope
    from report_drafts.tables import User
    from report_drafts.users import rotate_token

    with session_scope(get_engine()) as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise click.ClickException(f"no user {name!r}")
        click.echo(rotate_token(session, user))


@users.command("disable")
@click.argument("name")
def disable(name: str) -> None:
    """Disable NAME: their token and sessions stop working at once."""
    from sqlalchemy import select

    from raddraft.db import get_engine, session_scope
    from report_drafts.tables import User
    from report_drafts.users import disable_user

    with session_scope(get_engine()) as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise click.ClickException(f"no user {name!r}")
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
    from sqlalchemy import select

    from raddraft.db import get_engine, session_scope
    from report_drafts.tables import User
    from report_drafts.users import set_password

    secret = _new_password(ask=not password_stdin, from_stdin=password_stdin, never=False)
    with session_scope(get_engine()) as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise click.ClickException(f"no user {name!r}")
        set_password(session, user, secret)
    click.echo(f"user {name}: password {'set' if secret else 'removed'}, sessions ended")


@click.command()
@click.option("--host", default=None, help="Default: RADDRAFT_WEB_HOST.")
@click.option("--port", type=int, default=None, help="Default: RADDRAFT_WEB_PORT.")
def web(host: str | None, port: int | None) -> None:
    """Serve the review desk, the queue page, the API, FHIR and /metrics with uvicorn."""
    import uvicorn

    from web import create_web_app

    settings = get_settings()
    bind, bind_port = host or settings.web_host, port or settings.web_port
    tls = bool(settings.web_tls_cert and settings.web_tls_key)
    url = f"{'https' if tls else 'http'}://{bind}:{bind_port}/"
    # log_config=None: uvicorn logs through RadDraft's handler, one format for every process;
    # log_level=None: the levels stay as raddraft.logging set them (access lines at INFO).
    config = uvicorn.Config(
        create_web_app(settings), host=bind, port=bind_port, log_level=None, log_config=None
    )
    config.load()
    if tls:
        # uvicorn's own ssl options cannot set a minimum version: the PS3.15 B.9 (BCP 195)
        # context from raddraft.tls replaces the one it would build.
        cert, key, ca = settings.web_tls_cert, settings.web_tls_key, settings.web_tls_ca
        assert cert is not None and key is not None
        config.ssl = server_context(cert, key, ca)
    logging.getLogger("raddraft.web").info(
        "web serving %s", kv(url=url, api_docs=f"{url}docs", fhir=f"{url}fhir/")
    )
    uvicorn.Server(config).run()


@click.command()
@click.argument("identifier")
def trace(identifier: str) -> None:
    """From any id you have to the draft version, model, program version, stage traces, signer
    and every send with the peer's answer (ACK, DICOM status, HTTP status and ETag): a Study
    Instance UID, an accession number, the SOP Instance UID of a received image or of a sent SR,
    GSPS or rejection note, a FHIR id (DiagnosticReport/..., or bare), an HL7 control id of a
    message or its ACK."""
    from raddraft.db import get_engine, session_scope
    from report_drafts import visible
    from report_drafts.trace import trace as find

    with session_scope(get_engine()) as session:
        results = find(session, identifier)
    if not results:
        raise click.ClickException(
            f"no study, image, report or sent object is called {identifier!r} "
            "(try a Study Instance UID, accession number, SOP Instance UID, FHIR id or HL7 "
            "control id)"
        )
    for t in results:
        click.echo(f"{identifier} ({t.matched}) -> report {t.report_id} version {t.version}")
        click.echo(f"  status {t.status}, state {t.state}, by {t.actor} at {t.at}")
        signer = (
            f"{t.signer['name']} ({t.signer['login']}, {t.signer['organization']})"
            if t.signer
            else "not signed"
        )
        click.echo(f"  signer: {signer}")
        demo = " [DEMO model]" if t.demo else ""
        click.echo(
            f"  model: {t.model} revision {t.model_revision or '-'}; "
            f"RadDraft {t.program_version or '-'}{demo}"
        )
        click.echo(f"  prior: {t.prior or '-'}")
        for stage in t.stages:
            # The raw model answer, its control characters shown as symbols, never printed.
            question = visible(str(stage.get("question") or "")).replace("\n", " ")
            answer = visible(str(stage.get("answer") or "")).replace("\n", " ")
            click.echo(
                f'  stage {stage.get("stage")}: "{question[:60]}" -> "{answer[:80]}" '
                f"({stage.get('seconds')} s)"
            )
        for sent in t.sent:
            replaced = sent.get("replaced_by_version")
            click.echo(
                f"  sent {sent['kind']} {sent['identifier']} to {sent['destination']}: "
                f"{sent['state']} after {sent['attempts']} attempt(s)"
                + (f", replaced by version {replaced}" if replaced else "")
                + (f" ({sent['note']})" if sent.get("note") and sent["state"] != "sent" else "")
            )
        for attempt in t.attempts:
            answer = " ".join(f"{k}={v}" for k, v in attempt["response"].items() if v is not None)
            outcome = {True: "ok", False: "failed", None: attempt["action"]}[attempt["ok"]]
            click.echo(
                f"  {attempt['at']} {attempt['kind']} {attempt['identifier']} -> "
                f"{attempt['destination']}: {outcome} {answer}".rstrip()
                + (f" [{attempt['error']}]" if attempt.get("error") else "")
            )

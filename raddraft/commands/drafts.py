"""``raddraft users``, ``raddraft web`` and ``raddraft trace``: people, the web app, provenance."""

from __future__ import annotations

import click

from raddraft.settings import get_settings

ROLES = ("reader", "radiologist", "admin")


@click.group()
def users() -> None:
    """Manage the people who use the review API and pages."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--display-name", default="", help='DICOM person name, "Family^Given".')
@click.option(
    "--password",
    is_flag=True,
    default=False,
    help="Also set a password for the pages' sign-in (asked for, not echoed).",
)
def add(name: str, role: str, display_name: str, password: bool) -> None:
    """Add user NAME and print their API token (shown this once only)."""
    from raddraft.db import get_engine, session_scope
    from report_drafts.states import InvalidRequest
    from report_drafts.users import add_user

    secret = (
        click.prompt("password", hide_input=True, confirmation_prompt=True) if password else None
    )
    try:
        with session_scope(get_engine()) as session:
            user, token = add_user(session, name, role, display_name=display_name, password=secret)
            role_name = user.role
    except InvalidRequest as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"user {name} ({role_name}) added; API token, shown only now:", err=True)
    click.echo(token)


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

    with session_scope(get_engine()) as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise click.ClickException(f"no user {name!r}")
        user.active = False
    click.echo(f"user {name} disabled")


@click.command()
@click.option("--host", default=None, help="Default: RADDRAFT_WEB_HOST.")
@click.option("--port", type=int, default=None, help="Default: RADDRAFT_WEB_PORT.")
def web(host: str | None, port: int | None) -> None:
    """Serve the review desk, the queue page, the API, FHIR and /metrics with uvicorn."""
    import uvicorn

    from report_drafts.web import create_web_app

    settings = get_settings()
    uvicorn.run(
        create_web_app(settings),
        host=host or settings.web_host,
        port=port or settings.web_port,
        log_level=settings.log_level.lower(),
    )


@click.command()
@click.argument("identifier")
def trace(identifier: str) -> None:
    """From a sent object's id (SR/GSPS/rejection note SOP Instance UID, FHIR id, HL7 control id
    of a message or its ACK) to the draft version, model, program version, stage traces,
    signer, and every send with the peer's answer (ACK, DICOM status, HTTP status and ETag)."""
    from raddraft.db import get_engine, session_scope
    from report_drafts.trace import trace as find

    with session_scope(get_engine()) as session:
        results = find(session, identifier)
    if not results:
        raise click.ClickException(f"nothing RadDraft sent is called {identifier!r}")
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
            answer = str(stage.get("answer") or "").replace("\n", " ")
            click.echo(
                f"  stage {stage.get('stage')}: {str(stage.get('question') or '')[:60]!r} -> "
                f"{answer[:80]!r} ({stage.get('seconds')} s)"
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

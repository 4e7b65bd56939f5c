"""``raddraft db``: the database schema."""

from __future__ import annotations

import click

from raddraft.settings import get_settings


@click.group()
def db() -> None:
    """Manage the database schema (Alembic migrations)."""


@db.command()
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION on RADDRAFT_DATABASE_URL."""
    from raddraft import migrate
    from raddraft.db import get_engine

    settings = get_settings()
    get_engine()  # creates the data directory for the SQLite default
    migrate.upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}: {_redact(settings.database_url)}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)

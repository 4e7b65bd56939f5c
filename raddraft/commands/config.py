"""``raddraft settings``: every setting with its value, default and meaning."""

from __future__ import annotations

import json

import click

from raddraft.settings import describe, get_settings, set_by_user


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per setting, as a list.")
@click.option(
    "--changed",
    is_flag=True,
    help="Only settings you set (environment or .env), not defaults derived from others.",
)
def settings(as_json: bool, changed: bool) -> None:
    """Print every setting (RADDRAFT_* environment variables and .env) with its value, its
    default and what it means, from the one settings object."""
    current = get_settings()
    rows = describe(current)
    if changed:
        chosen = set_by_user(current)
        rows = [row for row in rows if row.variable in chosen]
    if as_json:
        click.echo(json.dumps([row.__dict__ for row in rows], indent=1))
        return
    for row in rows:
        origin = "default" if row.value == row.default else f"default: {row.default or 'empty'}"
        click.echo(f"{row.variable}={row.value}  ({origin})")
        click.echo(f"    {row.meaning}")

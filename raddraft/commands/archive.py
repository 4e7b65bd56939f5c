"""``raddraft archive purge``: the retention purge by hand, or what it would take."""

from __future__ import annotations

import json

import click

from raddraft.settings import get_settings


@click.group()
def archive() -> None:
    """The image archive: retention."""


@archive.command("purge")
@click.option(
    "--dry-run", is_flag=True, help="Say what would go and why the rest stays; change nothing."
)
@click.option("--all", "show_all", is_flag=True, help="With --dry-run, list kept studies too.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def purge(dry_run: bool, show_all: bool, as_json: bool) -> None:
    """Purge the images of studies the retention policy lets go (RADDRAFT_RETENTION_DAYS)."""
    from raddraft.db import session_scope
    from report_drafts import retention_verdicts
    from worker import retention

    settings = get_settings()
    if dry_run:
        with session_scope() as session:
            found = retention_verdicts(session, settings)
        shown = [v for v in found if v.purgeable or show_all]
        if as_json:
            click.echo(json.dumps([v.__dict__ for v in shown], indent=1))
            return
        for v in shown:
            verb = "would purge" if v.purgeable else "keeps"
            size = f"{v.instances} instances, {v.bytes} bytes"
            click.echo(f"{verb} {v.study_instance_uid}: {size} ({v.reason})")
        going = [v for v in found if v.purgeable]
        click.echo(
            f"{len(going)} of {len(found)} archived studies would be purged, "
            f"{sum(v.bytes for v in going)} bytes (dry run: nothing changed)"
        )
        return
    purged = retention.purge(settings)
    if as_json:
        click.echo(json.dumps([p.__dict__ for p in purged], indent=1, default=list))
        return
    for p in purged:
        click.echo(f"purged {p.study_instance_uid}: {p.instances} instances, {p.bytes} bytes")
    click.echo(f"{len(purged)} studies purged, {sum(p.bytes for p in purged)} bytes")

"""``raddraft worker``, ``raddraft router`` and ``raddraft exports``."""

from __future__ import annotations

import signal
import threading

import click

from raddraft.settings import get_settings


@click.command()
@click.option(
    "--queues",
    "-Q",
    default="gpu,io",
    show_default=True,
    help="Comma-separated queues: gpu (drafting), io (exports, RIS).",
)
@click.option(
    "--concurrency",
    "-c",
    default=2,
    show_default=True,
    help="Parallel tasks for io-only workers (gpu workers run one at a time).",
)
@click.option(
    "--no-model",
    is_flag=True,
    hidden=True,
    help="Diagnostics: serve the gpu queue without loading the model.",
)
def worker(queues: str, concurrency: int, no_model: bool) -> None:
    """Run a Celery worker; a gpu worker loads the model once at start."""
    from worker.process import run_worker

    names = [q.strip() for q in queues.split(",") if q.strip()]
    run_worker(get_settings(), names, concurrency, load_model=not no_model)


def _run_router() -> None:
    from worker import router as routing
    from worker.app import make_app

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    settings = get_settings()
    routing.run(make_app(settings), settings, stop)


@click.command()
def router() -> None:
    """Send due jobs to the broker by priority and recover jobs of dead workers."""
    _run_router()


@click.group(invoke_without_command=True)
@click.option("--failed", is_flag=True, help="Only dead-lettered exports.")
@click.pass_context
def exports(ctx: click.Context, failed: bool) -> None:
    """List exports and messages to PACS and RIS (``retry ID`` sends one again)."""
    if ctx.invoked_subcommand is None:
        _list_exports(failed)


def _list_exports(failed: bool) -> None:
    from sqlalchemy import select

    from raddraft import jobs
    from raddraft.db import session_scope

    with session_scope() as session:
        query = select(jobs.Job).where(jobs.Job.queue == "io").order_by(jobs.Job.id)
        if failed:
            query = query.where(jobs.Job.state == jobs.JobState.dead)
        rows = session.scalars(query).all()
        if not rows:
            click.echo("no failed exports" if failed else "no exports")
        for job in rows:
            click.echo(
                f"{job.id}\t{job.state}\t{job.task}\t{job.args}\tattempts={job.attempts}"
                f"\t{job.last_error or ''}"
            )


@exports.command("retry")
@click.argument("job_id", type=int)
def retry_export(job_id: int) -> None:
    """Give dead-lettered export JOB_ID a fresh set of attempts."""
    from raddraft import jobs
    from raddraft.db import session_scope

    with session_scope() as session:
        try:
            job = jobs.retry(session, job_id)
        except (LookupError, ValueError) as error:
            raise click.ClickException(str(error)) from error
        click.echo(f"job {job.id} queued again")

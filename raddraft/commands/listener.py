"""``raddraft listen``, ``raddraft studies`` and ``raddraft study complete``: the DICOM listener."""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
from typing import Any

import click
from sqlalchemy.orm import Session

import dicom_listener
from raddraft.db import get_engine
from raddraft.settings import get_settings


@click.command()
@click.option("--port", type=int, default=None, help="TCP port (default RADDRAFT_DICOM_PORT).")
@click.option("--host", default=None, help="Address to bind (default RADDRAFT_DICOM_HOST).")
def listen(port: int | None, host: str | None) -> None:
    """Run the DICOM listener (C-ECHO, C-STORE SCP) until Ctrl-C or SIGTERM.

    Received instances go to RADDRAFT_DATA_DIR/archive and the database; complete, eligible
    chest studies are queued for drafting. Only calling AE titles in RADDRAFT_ALLOWED_CALLERS
    may associate ('*' allows any; empty allows none).
    """
    from dicom_listener.scp import Listener

    settings = get_settings()
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    listener = Listener(settings).start(port=port, host=host)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        listener.stop()


PAGE_LIMIT = 1000


def studies_page_query(
    *,
    limit: int,
    before: tuple[dt.datetime, int] | None,
    patient_id: str | None,
    accession: str | None,
    report_state: str | None,
    since: dt.datetime | None,
) -> Any:
    """One page of studies, newest first, with the latest version, its report's state and the
    study's instance count: one query, on ``ix_studies_last_received``."""
    from sqlalchemy import func, select, tuple_
    from sqlalchemy.orm import aliased

    from dicom_listener.tables import Instance, Patient, Series, Study, StudyVersion
    from report_drafts.tables import Report

    latest = aliased(StudyVersion)
    newest_number = (
        select(func.max(StudyVersion.number))
        .where(StudyVersion.study_pk == Study.id)
        .correlate(Study)
        .scalar_subquery()
    )
    instances = (
        select(func.count(Instance.id))
        .join(Series, Series.id == Instance.series_pk)
        .where(Series.study_pk == Study.id)
        .correlate(Study)
        .scalar_subquery()
    )
    query = (
        select(Study, Patient.patient_id, latest, Report.state, instances)
        .join(Patient, Patient.id == Study.patient_pk)
        .outerjoin(latest, (latest.study_pk == Study.id) & (latest.number == newest_number))
        .outerjoin(Report, Report.study_version_pk == latest.id)
    )
    if before is not None:
        query = query.where(
            tuple_(Study.last_received_at, Study.id)
            < tuple_(literal(before[0], Study.last_received_at.type), literal(before[1]))
        )
    if patient_id:
        query = query.where(Patient.patient_id == patient_id)
    if accession:
        query = query.where(Study.accession_number == accession)
    if report_state:
        query = query.where(Report.state == report_state)
    if since is not None:
        query = query.where(Study.last_received_at >= since)
    return query.order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)


def literal(value: Any, type_: Any = None) -> Any:
    from sqlalchemy import literal as sql_literal

    return sql_literal(value, type_)


def _study_rows(**filters: Any) -> list[dict[str, Any]]:
    from sqlalchemy.orm import Session

    from raddraft.db import get_engine

    rows = []
    with Session(get_engine()) as session:
        for study, patient_id, version, report_state, instances in session.execute(
            studies_page_query(**filters)
        ):
            rows.append(
                {
                    "study_instance_uid": study.study_instance_uid,
                    "patient_id": patient_id,
                    "accession_number": study.accession_number,
                    "study_date": study.study_date,
                    "description": study.study_description,
                    "state": version.state if version else "empty",
                    "report_state": report_state,
                    "instances": int(instances or 0),
                    "last_received_at": study.last_received_at.isoformat(),
                    "cursor": f"{study.last_received_at.isoformat()},{study.id}",
                    "versions": version.number if version else 0,
                    "latest_version": None
                    if version is None
                    else {
                        "number": version.number,
                        "study_version_pk": version.id,
                        "state": version.state,
                        "completion_reason": version.completion_reason,
                        "completed_at": version.completed_at.isoformat()
                        if version.completed_at
                        else None,
                        "eligible": version.eligible,
                        "ineligible_reason": version.ineligible_reason,
                        "job_key": version.job_key,
                    },
                }
            )
    return rows


def _cursor(value: str | None) -> tuple[dt.datetime, int] | None:
    if not value:
        return None
    try:
        when, study_pk = value.rsplit(",", 1)
        parsed = dt.datetime.fromisoformat(when)
        if parsed.tzinfo is None:
            raise ValueError(value)
        return parsed, int(study_pk)
    except ValueError as error:
        raise click.BadParameter("give the cursor a page printed (--before)") from error


def _since(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise click.BadParameter("a date or time, e.g. 2026-12-01") from error
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--limit",
    type=click.IntRange(1, PAGE_LIMIT),
    default=50,
    show_default=True,
    help="Studies on one page.",
)
@click.option("--before", default=None, help="Page on: the cursor the previous page printed.")
@click.option("--patient", "patient_id", default=None, help="Only this Patient ID.")
@click.option("--accession", default=None, help="Only this accession number.")
@click.option("--report-state", default=None, help="Only studies whose report is in this state.")
@click.option("--since", default=None, help="Only studies received since (ISO date or time).")
@click.pass_context
def studies(
    context: click.Context,
    as_json: bool,
    limit: int,
    before: str | None,
    patient_id: str | None,
    accession: str | None,
    report_state: str | None,
    since: str | None,
) -> None:
    """List received studies, newest first, a page at a time: accession number, study and
    report state, versions, eligibility and instance counts."""
    if context.invoked_subcommand is not None:
        return
    rows = _study_rows(
        limit=limit,
        before=_cursor(before),
        patient_id=patient_id,
        accession=accession,
        report_state=report_state,
        since=_since(since),
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no studies received" if not before else "no more studies")
        return
    click.echo(
        f"{'STUDY INSTANCE UID':<64}  {'ACCESSION':<16} {'PATIENT':<12} {'STATE':<8} "
        f"{'REPORT':<10} {'V':>2} {'IMG':>4}  ELIGIBLE"
    )
    for row in rows:
        latest = row["latest_version"] or {}
        eligible = latest.get("eligible")
        verdict = (
            "-"
            if eligible is None
            else "yes"
            if eligible
            else f"no: {latest.get('ineligible_reason')}"
        )
        click.echo(
            f"{row['study_instance_uid']:<64}  {row['accession_number'][:16]:<16} "
            f"{row['patient_id'][:12]:<12} {row['state']:<8} {row['report_state'] or '-':<10} "
            f"{row['versions']:>2} {row['instances']:>4}  {verdict}"
        )
    if len(rows) == limit:
        click.echo(f"next page: raddraft studies --before '{rows[-1]['cursor']}'", err=True)


@studies.command("conflicts")
@click.option("--limit", type=int, default=100, show_default=True, help="Newest this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
def conflicts(limit: int, as_json: bool) -> None:
    """SOP Instance UIDs received again with other content (another patient, study, ...):
    what differed, who sent it, where the refused copy is kept (quarantine)."""
    with Session(get_engine()) as session:
        found = dicom_listener.instance_conflicts(session, limit=limit)
    if as_json:
        rows = [
            {
                "id": c.id,
                "at": c.at.isoformat(),
                "sop_instance_uid": c.sop_instance_uid,
                "calling_ae_title": c.calling_ae_title,
                "peer": c.peer,
                "differences": c.differences,
                "status": f"0x{c.status:04X}",
                "quarantined": c.quarantined,
            }
            for c in found
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not found:
        click.echo("no conflicts recorded")
        return
    for c in found:
        differ = "; ".join(
            f"{name}: stored {v.get('stored')!r}, received {v.get('received')!r}"
            for name, v in sorted(c.differences.items())
        )
        click.echo(
            f"{c.at.isoformat(timespec='seconds')} {c.sop_instance_uid} from "
            f"{c.calling_ae_title or '-'}@{c.peer or '-'}: {differ} (copy: {c.quarantined or '-'})"
        )


@click.group()
def study() -> None:
    """Act on one received study."""


@study.command("complete")
@click.argument("uid")
def complete(uid: str) -> None:
    """Force completion of study UID's open version now (queues its draft when eligible)."""
    from dicom_listener import complete_study

    try:
        done = complete_study(uid)
    except LookupError as error:
        raise click.ClickException(str(error)) from error
    if not done:
        click.echo(f"{uid}: no open version (already complete)")
        return
    for item in done:
        verdict = "eligible" if item.eligible else f"not eligible: {item.ineligible_reason}"
        job = f", job {item.job_key}" if item.job_key else ""
        click.echo(f"{uid}: version {item.number} complete ({verdict}{job})")

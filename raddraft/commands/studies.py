"""``raddraft studies`` and ``raddraft studies conflicts``: the archive's studies, a page at a time.

A command line must answer at once, even with years of studies in the archive: the page is one
query on ``ix_studies_last_received``, and this module imports no RadDraft package. The archive's
tables belong to ``dicom_listener`` and the reports' to ``report_drafts``; importing either
package brings pydicom and highdicom, over a second before the first row. So the page reads the
few columns it needs through SQLAlchemy Core descriptions of those tables (``_STUDIES`` and the
rest below); ``tests/listener/test_studies_command.py`` holds them equal to the owners' tables,
names and types, so they cannot drift.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
from sqlalchemy import Boolean, Integer, String, Text, column, func, select, table, tuple_
from sqlalchemy import literal as sql_literal
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import TableClause

from raddraft.db import UTCDateTime, get_engine, iso

PAGE_LIMIT = 1000

_PATIENTS = table("patients", column("id", Integer), column("patient_id", String))
_STUDIES = table(
    "studies",
    column("id", Integer),
    column("patient_pk", Integer),
    column("study_instance_uid", String),
    column("accession_number", String),
    column("study_date", String),
    column("study_description", String),
    column("last_received_at", UTCDateTime),
)
_VERSIONS = table(
    "study_versions",
    column("id", Integer),
    column("study_pk", Integer),
    column("number", Integer),
    column("state", String),
    column("completion_reason", String),
    column("completed_at", UTCDateTime),
    column("eligible", Boolean),
    column("ineligible_reason", Text),
    column("job_key", String),
)
_SERIES = table("series", column("id", Integer), column("study_pk", Integer))
_INSTANCES = table("instances", column("id", Integer), column("series_pk", Integer))
_REPORTS = table("reports", column("study_version_pk", Integer), column("state", String))

# Each description with the package that owns the table, for the test that holds them equal.
DESCRIBED: tuple[tuple[str, TableClause], ...] = (
    ("dicom_listener", _PATIENTS),
    ("dicom_listener", _STUDIES),
    ("dicom_listener", _VERSIONS),
    ("dicom_listener", _SERIES),
    ("dicom_listener", _INSTANCES),
    ("report_drafts", _REPORTS),
)


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
    study, patient, report = _STUDIES.c, _PATIENTS.c, _REPORTS.c
    latest = _VERSIONS.alias("latest")
    newest_number = (
        select(func.max(_VERSIONS.c.number))
        .where(_VERSIONS.c.study_pk == study.id)
        .correlate(_STUDIES)
        .scalar_subquery()
    )
    instances = (
        select(func.count(_INSTANCES.c.id))
        .join(_SERIES, _SERIES.c.id == _INSTANCES.c.series_pk)
        .where(_SERIES.c.study_pk == study.id)
        .correlate(_STUDIES)
        .scalar_subquery()
    )
    query = (
        select(
            study.id,
            study.study_instance_uid,
            study.accession_number,
            study.study_date,
            study.study_description,
            study.last_received_at,
            patient.patient_id,
            latest.c.id.label("version_pk"),
            latest.c.number,
            latest.c.state,
            latest.c.completion_reason,
            latest.c.completed_at,
            latest.c.eligible,
            latest.c.ineligible_reason,
            latest.c.job_key,
            report.state.label("report_state"),
            instances.label("instances"),
        )
        .select_from(_STUDIES)
        .join(_PATIENTS, patient.id == study.patient_pk)
        .outerjoin(latest, (latest.c.study_pk == study.id) & (latest.c.number == newest_number))
        .outerjoin(_REPORTS, report.study_version_pk == latest.c.id)
    )
    if before is not None:
        query = query.where(
            tuple_(study.last_received_at, study.id)
            < tuple_(sql_literal(before[0], UTCDateTime()), sql_literal(before[1]))
        )
    if patient_id:
        query = query.where(patient.patient_id == patient_id)
    if accession:
        query = query.where(study.accession_number == accession)
    if report_state:
        query = query.where(report.state == report_state)
    if since is not None:
        query = query.where(study.last_received_at >= since)
    return query.order_by(study.last_received_at.desc(), study.id.desc()).limit(limit)


def _study_rows(**filters: Any) -> list[dict[str, Any]]:
    rows = []
    with Session(get_engine()) as session:
        for row in session.execute(studies_page_query(**filters)).mappings():
            has_version = row["version_pk"] is not None
            rows.append(
                {
                    "study_instance_uid": row["study_instance_uid"],
                    "patient_id": row["patient_id"],
                    "accession_number": row["accession_number"],
                    "study_date": row["study_date"],
                    "description": row["study_description"],
                    "state": row["state"] if has_version else "empty",
                    "report_state": row["report_state"],
                    "instances": int(row["instances"] or 0),
                    "last_received_at": row["last_received_at"].isoformat(),
                    "cursor": f"{row['last_received_at'].isoformat()},{row['id']}",
                    "versions": row["number"] if has_version else 0,
                    "latest_version": {
                        "number": row["number"],
                        "study_version_pk": row["version_pk"],
                        "state": row["state"],
                        "completion_reason": row["completion_reason"],
                        "completed_at": iso(row["completed_at"]),
                        "eligible": row["eligible"],
                        "ineligible_reason": row["ineligible_reason"],
                        "job_key": row["job_key"],
                    }
                    if has_version
                    else None,
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
    import dicom_listener  # the listener's own reader; only this subcommand needs the package

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

"""``raddraft listen``, ``raddraft studies`` and ``raddraft study complete``: the DICOM listener."""

from __future__ import annotations

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


def _study_rows() -> list[dict[str, Any]]:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from dicom_listener.tables import Instance, Patient, Study, StudyVersion
    from raddraft.db import get_engine

    with Session(get_engine()) as session:
        counts = dict(
            session.execute(
                select(Instance.version_pk, func.count(Instance.id)).group_by(Instance.version_pk)
            ).all()
        )
        rows = []
        studies = session.execute(
            select(Study, Patient)
            .join(Patient, Study.patient_pk == Patient.id)
            .order_by(Study.last_received_at.desc())
        ).all()
        for study, patient in studies:
            versions = session.scalars(
                select(StudyVersion)
                .where(StudyVersion.study_pk == study.id)
                .order_by(StudyVersion.number)
            ).all()
            latest = versions[-1] if versions else None
            rows.append(
                {
                    "study_instance_uid": study.study_instance_uid,
                    "patient_id": patient.patient_id,
                    "accession_number": study.accession_number,
                    "study_date": study.study_date,
                    "description": study.study_description,
                    "state": latest.state if latest else "empty",
                    "instances": sum(counts.get(v.id, 0) for v in versions),
                    "last_received_at": study.last_received_at.isoformat(),
                    "versions": [
                        {
                            "number": v.number,
                            "study_version_pk": v.id,
                            "state": v.state,
                            "instances": counts.get(v.id, 0),
                            "completion_reason": v.completion_reason,
                            "completed_at": v.completed_at.isoformat() if v.completed_at else None,
                            "eligible": v.eligible,
                            "ineligible_reason": v.ineligible_reason,
                            "job_key": v.job_key,
                        }
                        for v in versions
                    ],
                }
            )
    return rows


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def studies(context: click.Context, as_json: bool) -> None:
    """List received studies: state, versions, eligibility and instance counts."""
    if context.invoked_subcommand is not None:
        return
    rows = _study_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no studies received")
        return
    click.echo(
        f"{'STUDY INSTANCE UID':<64}  {'PATIENT':<12} {'STATE':<8} {'V':>2} {'IMG':>4}  ELIGIBLE"
    )
    for row in rows:
        latest = row["versions"][-1] if row["versions"] else {}
        eligible = latest.get("eligible")
        verdict = (
            "-"
            if eligible is None
            else "yes"
            if eligible
            else f"no: {latest.get('ineligible_reason')}"
        )
        click.echo(
            f"{row['study_instance_uid']:<64}  {row['patient_id'][:12]:<12} {row['state']:<8} "
            f"{len(row['versions']):>2} {row['instances']:>4}  {verdict}"
        )


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

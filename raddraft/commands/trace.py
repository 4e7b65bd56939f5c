"""``raddraft trace``: from any id to the draft, its model, its signer and every send."""

from __future__ import annotations

import click


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

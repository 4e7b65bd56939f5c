"""The exporter of results: DICOM SR/GSPS to PACS, HL7 v2 ORU to the RIS, FHIR to a server.

Each job sends what the lifecycle built and left in the outbox for one report version (never
rebuilding it: a retry sends the very bytes built at drafting or sign-off) to one destination,
and records each attempt per object. The destination is typed once
(:mod:`raddraft.destinations`: a job row's text or the settings' parsed into a target), and
:func:`peers.sender_for` resolves the target to its sender. Failures are classified by the sender
so the job runner retries a peer that is down and dead-letters one that refuses us for good. A
report's versions reach each destination in version order (:mod:`report_drafts.delivery`): a job
never sends an older version after a newer one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import peers
import report_drafts
from raddraft import destinations
from raddraft.db import session_scope
from raddraft.job_contract import ExportDicom, NotifyCritical, PushFhir, SendHl7
from raddraft.logging import kv
from raddraft.settings import Settings, get_settings
from worker.errors import NotYet, PermanentError, TransientError
from worker.send_audit import send_audited

log = logging.getLogger(__name__)


def _claim(
    settings: Settings, version_pk: int, kinds: tuple[str, ...], destination: str | None
) -> report_drafts.Claim:
    with session_scope() as session:
        return report_drafts.claim_sends(
            session, settings, version_pk, kinds=kinds, destination=destination
        )


def _record(
    sent: list[int],
    *,
    ok: bool,
    error: str | None = None,
    responses: dict[int, dict[str, Any]] | None = None,
) -> None:
    if not sent:
        return
    with session_scope() as session:
        for sent_pk in sent:
            report_drafts.record_sent(
                session, sent_pk, ok=ok, error=error, response=(responses or {}).get(sent_pk)
            )


def _release(pks: list[int]) -> None:
    if pks:
        with session_scope() as session:
            report_drafts.release(session, pks)


#: How soon a job waiting for an earlier version's delivery looks again (no attempt counted).
WAIT_SECONDS = 1.0


def deliver(
    target: destinations.Target,
    report_version_pk: int,
    *,
    rows_for: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Send a version's claimed objects of the kinds ``target`` carries to it and record each.

    ``rows_for`` limits the objects to those recorded for that destination (one job per PACS);
    ``None`` takes every pending one of the kind (the single RIS or FHIR server, wherever it is
    now). The claim (:func:`report_drafts.claim_sends`) keeps the report's versions in order:
    a later version's objects make these obsolete, an earlier version still being sent makes
    this job wait (:class:`NotYet`). Returns the timings ``sent`` (objects delivered),
    ``obsolete`` and ``export_s``; raises :class:`TransientError` / :class:`PermanentError` as
    the target classified the failure.
    """
    settings = settings or get_settings()
    claim = _claim(settings, report_version_pk, target.carries, rows_for)
    if claim.wait:
        raise NotYet(claim.reason, delay_seconds=WAIT_SECONDS)
    if not claim.items:
        return {"sent": 0, **({"obsolete": claim.obsolete} if claim.obsolete else {})}
    items = claim.items
    try:
        sender = peers.sender_for(target, settings)
    except ValueError:
        _release([item.sent_object_pk for item in items])
        raise
    rows: dict[str, list[int]] = defaultdict(list)
    for item in items:
        rows[item.identifier].append(item.sent_object_pk)
    outbound = [peers.Outbound(i.identifier, i.path, if_match=i.if_match) for i in items]
    try:
        delivery = _send(sender, outbound)
    except peers.DeliveryError as error:
        answers = _by_row(rows, error.responses)
        _record([pk for i in error.delivered for pk in rows[i]], ok=True, responses=answers)
        failed = [pk for i in error.failed for pk in rows[i]]
        _record(failed, ok=False, error=str(error), responses=answers)
        tried = set(error.delivered) | set(error.failed)
        _release([pk for i, pks in rows.items() if i not in tried for pk in pks])
        log.warning(
            "delivery failed %s",
            kv(
                kind=target.kind,
                destination=sender.destination,
                delivered=len(error.delivered),
                failed=len(error.failed),
                transient=isinstance(error, peers.TransientDeliveryError),
            ),
        )
        if isinstance(error, peers.TransientDeliveryError):
            raise TransientError(str(error)) from error
        raise PermanentError(str(error)) from error
    answers = _by_row(rows, delivery.responses)
    _record([pk for i in delivery.delivered for pk in rows[i]], ok=True, responses=answers)
    _release([pk for i, pks in rows.items() if i not in delivery.delivered for pk in pks])
    log.info(
        "delivered %s",
        kv(
            kind=target.kind,
            destination=delivery.destination,
            objects=len(delivery.delivered),
            warnings=len(delivery.warnings),
        ),
    )
    return {
        "sent": len(delivery.delivered),
        "export_s": round(delivery.seconds, 4),
        **({"replaced": claim.replaced} if claim.replaced else {}),
    }


def _send(sender: peers.Sender, outbound: list[peers.Outbound]) -> peers.Delivery:
    """The sender's send; anything but a classified failure counts as a transient one for
    every object, so no claimed row is left ``sending`` (later versions would wait on it)."""
    try:
        return send_audited(sender, outbound)  # with its ATNA records (PS3.15 A.5.3)
    except peers.DeliveryError:
        raise
    except Exception as error:
        raise peers.TransientDeliveryError(
            f"{type(error).__name__}: {error}", failed=[o.identifier for o in outbound]
        ) from error


def _by_row(
    rows: dict[str, list[int]], responses: dict[str, dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """The peer's answer per identifier, spread to the sent-object rows of that identifier."""
    return {pk: answer for i, answer in responses.items() for pk in rows.get(i, [])}


def export_dicom_job(job_id: int, args: ExportDicom) -> dict[str, Any]:
    """Send the version's SR and GSPS objects to one destination: C-STORE (PS3.4 Annex B) to
    ``AET@host:port``, STOW-RS (PS3.18 10.5) to a DICOMweb base URL."""
    target = destinations.export_target(args.destination)
    return deliver(target, args.report_version_pk, rows_for=args.destination)


def send_hl7_job(job_id: int, args: SendHl7) -> dict[str, Any]:
    """Send the version's ORU^R01 over MLLP and check the ACK (HL7 v2.5.1 ch. 7)."""
    settings = get_settings()
    target = destinations.ris_target(settings)
    if target is None:
        raise PermanentError("RADDRAFT_RIS_MLLP is not set")
    return deliver(target, args.report_version_pk, settings=settings)


def push_fhir_job(job_id: int, args: PushFhir) -> dict[str, Any]:
    """PUT the version's FHIR resources to the configured server (FHIR RESTful update)."""
    settings = get_settings()
    target = destinations.fhir_target(settings)
    if target is None:
        raise PermanentError("RADDRAFT_FHIR_SERVER_URL is not set")
    return deliver(target, args.report_version_pk, settings=settings)


def notify_critical_job(job_id: int, args: NotifyCritical) -> dict[str, Any]:
    """Send one critical-finding notice and record it delivered (MSA-1, or SMTP 250: the
    transport's reply; a person acknowledges it on the page or the API).

    A failure is recorded on the notice and raised as the target classified it, so the job
    runner retries a receiver that is down and dead-letters one that refuses the notice.
    """
    settings = get_settings()
    with session_scope() as session:
        row = report_drafts.notification(session, args.notification_pk)
        if row.state in ("sent", "held"):
            return {"sent": 0, "state": row.state}
        target = destinations.notice_target(row.channel, row.destination)
        try:
            path = report_drafts.materialise(session, settings, row.path)
        except report_drafts.OutboxPayloadError as error:
            log.error("%s", error)
            path = settings.data_dir / "outbox" / row.path  # absent: the send fails, recorded
        outbound = peers.Outbound(row.identifier, path)
    sender = peers.sender_for(target, settings)
    try:
        delivery = send_audited(sender, [outbound])
    except peers.DeliveryError as error:
        with session_scope() as session:
            report_drafts.record_notification(
                session, args.notification_pk, ok=False, error=str(error)
            )
        log.warning(
            "critical notice failed %s",
            kv(channel=target.kind, destination=str(target), notice=args.notification_pk),
        )
        if isinstance(error, peers.TransientDeliveryError):
            raise TransientError(str(error)) from error
        raise PermanentError(str(error)) from error
    ack = str(delivery.detail.get("acks", {}).get(outbound.identifier, ""))
    with session_scope() as session:
        report_drafts.record_notification(session, args.notification_pk, ok=True, ack=ack)
    log.info("critical notice delivered %s", kv(channel=target.kind, reply=ack[:40]))
    return {"sent": 1, "ack": ack}

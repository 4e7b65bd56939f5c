"""Taking one order message: store it as received, check it, record the order, answer.

The raw message is committed first, in a transaction of its own, so whatever happens next
(a message we cannot parse, a facility not allowed, a database error while applying it) the
message is kept and can be read back; only then is it parsed and applied. A message that could
not be stored is answered AE, so the sender keeps it and sends it again.

Applying an order (same transaction as the order row): a STAT order moves the study's queued
draft jobs to the front at once; a cancelled order (ORC-1 CA/OC) finishes its queued draft jobs
unrun. Both enqueue an ``ApplyOrder`` job: the worker, which may touch the drafts, raises the
report priority or marks the report for withdrawal. The order's indication and priority are
read by the worker when it drafts (:func:`orders.order_for_accession`), so an order arriving
after the images still counts.
"""

from __future__ import annotations

import logging

from sqlalchemy import String, cast, literal, select, update
from sqlalchemy.orm import Session

from dicom_listener import Study, StudyVersion
from orders.hl7 import ERR_APPLICATION_INTERNAL, Header, OrderError, OrderFields, ack, header_of
from orders.hl7 import parse_order as parse_fields
from orders.tables import Order, OrderMessage, OrderStatus
from raddraft import job_contract, jobs
from raddraft.db import session_scope, utcnow
from raddraft.logging import kv
from raddraft.settings import Settings

log = logging.getLogger(__name__)


def facility_allowed(settings: Settings, facility: str) -> bool:
    """MSH-4 on the allow-list (``*`` takes any; an empty list takes none)."""
    allowed = settings.orders_allowed_facilities
    return "*" in allowed or facility in allowed


def _store_raw(raw: str, peer: str) -> int:
    with session_scope() as session:
        row = OrderMessage(raw=raw, peer=peer[:128])
        session.add(row)
        session.flush()
        return row.id


def _finish(message_pk: int, header: Header | None, code: str, error: str | None) -> None:
    with session_scope() as session:
        row = session.get(OrderMessage, message_pk)
        assert row is not None
        row.ack_code = code
        row.error = error
        if header is not None:
            row.sending_facility = header.sending_facility[:64]
            row.message_type = header.message_type[:32]
            row.control_id = header.control_id[:64]


def _header_if_any(raw: str) -> Header | None:
    try:
        return header_of(raw)
    except OrderError:
        return None


def receive(raw: str, peer: str, settings: Settings, *, refused: str = "") -> str:
    """Take one order message; return the ER7 ACK to send back.

    ``refused``: the listener could not take the frame whole (too large, no end block); what
    came is stored all the same and answered AR with this reason."""
    try:
        message_pk = _store_raw(raw, peer)
    except Exception as error:  # the database is down: refuse so the sender keeps it
        log.exception("order message not stored %s", kv(peer=peer))
        return ack(None, "AE", f"not stored, send again: {error}", ERR_APPLICATION_INTERNAL)
    header: Header | None = None
    try:
        if refused:
            header = _header_if_any(raw)
            raise OrderError("AR", refused, ERR_APPLICATION_INTERNAL)
        header = header_of(raw)
        if not facility_allowed(settings, header.sending_facility):
            raise OrderError(
                "AR",
                f"sending facility {header.sending_facility or '(empty)'} is not allowed",
                ERR_APPLICATION_INTERNAL,
            )
        fields = parse_fields(raw, header)
        with session_scope() as session:
            order_pk = apply_order(session, fields, header, message_pk)
            row = session.get(OrderMessage, message_pk)
            assert row is not None
            row.order_pk = order_pk
    except OrderError as error:
        _finish(message_pk, header, error.code, error.text)
        log.warning("order refused %s", kv(code=error.code, why=error.text, message=message_pk))
        return ack(header, error.code, error.text, error.error)
    except Exception as error:
        log.exception("order not applied %s", kv(message=message_pk))
        _finish(message_pk, header, "AE", f"internal error: {error}")
        return ack(header, "AE", f"internal error: {error}", ERR_APPLICATION_INTERNAL)
    _finish(message_pk, header, "AA", None)
    log.info(
        "order taken %s",
        kv(accession=fields.accession_number, control=fields.order_control, message=message_pk),
    )
    return ack(header, "AA")


def apply_order(session: Session, fields: OrderFields, header: Header, message_pk: int) -> int:
    """Record the order (one row per accession) and act on its priority and cancellation."""
    order = session.scalar(
        select(Order).where(Order.accession_number == fields.accession_number).with_for_update()
    )
    if order is None:
        order = Order(accession_number=fields.accession_number)
        session.add(order)
    for name in (
        "placer_order_number",
        "filler_order_number",
        "patient_id",
        "patient_id_authority",
        "patient_name",
        "ordering_provider",
        "indication",
    ):
        value = getattr(fields, name)
        if value:  # a cancel message often repeats only the keys: keep what the order said
            setattr(order, name, value)
    if fields.priority is not None:
        order.priority = int(fields.priority)
    order.order_control = fields.order_control
    order.sending_facility = header.sending_facility[:64]
    order.updated_at = utcnow()
    if fields.cancelled and order.status != OrderStatus.cancelled:
        order.status = OrderStatus.cancelled
        order.cancelled_at = utcnow()
    session.flush()
    keys = _draft_keys(session, order.accession_number)
    if order.status == OrderStatus.cancelled:
        _stop_drafts(session, keys)
    elif order.priority < jobs.Priority.routine:
        _raise_drafts(session, keys, order.priority)
    if fields.cancelled or order.priority < jobs.Priority.routine:
        job_contract.enqueue(
            session, job_contract.ApplyOrder(message_pk), priority=jobs.Priority.stat
        )
    return order.id


def _draft_keys(session: Session, accession: str) -> list[str]:
    """The draft job keys of every study version with this accession number."""
    pks = session.scalars(
        select(StudyVersion.id)
        .join(Study, Study.id == StudyVersion.study_pk)
        .where(Study.accession_number == accession)
    )
    return [job_contract.DraftStudy(pk).key for pk in pks]


def _raise_drafts(session: Session, keys: list[str], priority: int) -> None:
    """Queued draft jobs of the study jump to the order's priority (never lowered)."""
    if keys:
        session.execute(
            update(jobs.Job)
            .where(
                jobs.Job.key.in_(keys),
                jobs.Job.state.in_([jobs.JobState.pending, jobs.JobState.dispatched]),
                jobs.Job.priority > priority,
            )
            .values(priority=priority)
        )


def _stop_drafts(session: Session, keys: list[str]) -> None:
    """Queued draft jobs of a cancelled order are finished unrun: a worker's claim then fails
    (it claims pending or dispatched rows only), and a running one checks the order itself."""
    if keys:
        session.execute(
            update(jobs.Job)
            .where(
                jobs.Job.key.in_(keys),
                jobs.Job.state.in_([jobs.JobState.pending, jobs.JobState.dispatched]),
            )
            .values(
                state=jobs.JobState.done,
                timings={"skipped": "order cancelled"},
                finished_at=utcnow(),
            )
        )


def raise_waiting_drafts(session: Session) -> int:
    """Give pending draft jobs the priority of their study's active order, when higher.

    For an order that came before the images: the listener enqueues the draft at the DICOM
    header's priority (it knows nothing of orders); the router calls this before each pass so
    the STAT order still decides what runs next. Returns the number of jobs raised.
    """
    prefix = job_contract.DraftStudy(0).key[: -len("0")]
    rows = session.execute(
        select(jobs.Job.id, Order.priority)
        .select_from(jobs.Job)
        .join(StudyVersion, jobs.Job.key == literal(prefix) + cast(StudyVersion.id, String))
        .join(Study, Study.id == StudyVersion.study_pk)
        .join(Order, Order.accession_number == Study.accession_number)
        .where(
            jobs.Job.state == jobs.JobState.pending,
            jobs.Job.task == job_contract.DraftStudy.TASK,
            Order.status == OrderStatus.active,
            Order.priority < jobs.Job.priority,
        )
    ).all()
    for job_id, priority in rows:
        session.execute(update(jobs.Job).where(jobs.Job.id == job_id).values(priority=priority))
    return len(rows)

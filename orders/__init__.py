"""orders: the RIS's orders in, over HL7 v2 MLLP (ORM^O01, OMI^O23).

A receiver like :mod:`dicom_listener`: it stores every message as received, answers AA, AE or
AR, keeps one order row per accession number, and acts on what it may touch itself (the job
table: a STAT order moves queued draft jobs forward, a cancelled one stops them). It knows
nothing of drafts, peers, models or Celery; what the drafts must do about an order is the
worker's ``ApplyOrder`` job, and the worker reads an order when it drafts.

The public face:
    ``OrderServer(settings)``: the MLLP listener (``raddraft orders``)
    ``receive(raw, peer, settings) -> str``: take one message, return its ACK
    ``order_for_accession(session, accession) -> OrderInfo | None``
    ``order_for_message(session, order_message_pk) -> OrderInfo | None``
    ``raise_waiting_drafts(session) -> int``: the router's pass for orders before images
    the tables ``Order``, ``OrderMessage``, ``OrderStatus`` for read-only joins
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from orders.receive import raise_waiting_drafts, receive
from orders.server import OrderServer
from orders.tables import Order, OrderMessage, OrderStatus

__all__ = [
    "Order",
    "OrderInfo",
    "OrderMessage",
    "OrderServer",
    "OrderStatus",
    "order_for_accession",
    "order_for_message",
    "raise_waiting_drafts",
    "receive",
]


@dataclass(frozen=True)
class OrderInfo:
    """What a draft uses of an order."""

    accession_number: str
    indication: str
    priority: int  # raddraft.jobs.Priority
    cancelled: bool
    ordering_provider: str
    patient_id: str
    order_control: str


def _info(order: Order) -> OrderInfo:
    return OrderInfo(
        accession_number=order.accession_number,
        indication=order.indication,
        priority=order.priority,
        cancelled=order.status == OrderStatus.cancelled,
        ordering_provider=order.ordering_provider,
        patient_id=order.patient_id,
        order_control=order.order_control,
    )


def order_for_accession(session: Session, accession: str) -> OrderInfo | None:
    """The order for an accession number, or None (no order, or no accession)."""
    if not accession:
        return None
    order = session.scalar(select(Order).where(Order.accession_number == accession))
    return _info(order) if order else None


def order_for_message(session: Session, order_message_pk: int) -> OrderInfo | None:
    """The order a stored message was applied to."""
    message = session.get(OrderMessage, order_message_pk)
    if message is None or message.order_pk is None:
        return None
    order = session.get(Order, message.order_pk)
    return _info(order) if order else None

"""The orders' tables: every inbound order message as received, and the order it describes.

``order_messages`` keeps each message's raw text before anything is parsed, so a malformed or
refused message is never lost (it is answered AE/AR and can be read and replayed later).
``orders`` holds one row per accession number: the latest state of the RIS's order, which the
worker reads when it drafts the study (indication, priority, cancellation).
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from raddraft.db import Base, utcnow


class OrderStatus(enum.StrEnum):
    active = "active"
    cancelled = "cancelled"  # ORC-1 CA / OC: stop drafting, withdraw what was sent


class Order(Base):
    """The RIS's order for one accession number (filler side: the imaging department's)."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    accession_number: Mapped[str] = mapped_column(String(64), unique=True)
    placer_order_number: Mapped[str] = mapped_column(String(64), default="")
    filler_order_number: Mapped[str] = mapped_column(String(64), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_id_authority: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    ordering_provider: Mapped[str] = mapped_column(String(324), default="")
    indication: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[int] = mapped_column(default=2)  # raddraft.jobs.Priority
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.active)
    order_control: Mapped[str] = mapped_column(String(4), default="")  # last ORC-1
    sending_facility: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class OrderMessage(Base):
    """One inbound order message exactly as received, and how it was answered."""

    __tablename__ = "order_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    peer: Mapped[str] = mapped_column(String(128), default="")  # host:port of the sender
    raw: Mapped[str] = mapped_column(Text)
    sending_facility: Mapped[str] = mapped_column(String(64), default="")
    message_type: Mapped[str] = mapped_column(String(32), default="")
    control_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    ack_code: Mapped[str] = mapped_column(String(2), default="")  # MSA-1 we answered
    error: Mapped[str | None] = mapped_column(Text, default=None)
    order_pk: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), default=None)

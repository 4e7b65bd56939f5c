"""The audit trail: one row per view, edit, sign, export and message, queryable by study."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from report_drafts.tables import DEVICE_ACTOR, AuditEvent, User


def record(
    session: Session,
    action: str,
    *,
    user: User | None = None,
    actor: str | None = None,
    study_instance_uid: str = "",
    report_pk: int | None = None,
    version: int | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an audit event in the caller's transaction (it commits with the change itself)."""
    event = AuditEvent(
        actor=actor or (user.name if user else DEVICE_ACTOR),
        user_pk=user.id if user else None,
        action=action,
        study_instance_uid=study_instance_uid,
        report_pk=report_pk,
        version=version,
        detail=detail or {},
    )
    session.add(event)
    return event


def for_study(session: Session, study_instance_uid: str, *, limit: int = 1000) -> list[AuditEvent]:
    """The study's events, oldest first."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.study_instance_uid == study_instance_uid)
            .order_by(AuditEvent.at, AuditEvent.id)
            .limit(limit)
        )
    )

"""Critical findings from every text the draft carries, negation and uncertainty handled; a
notice is *delivered* by the transport's reply and *acknowledged* only by a named person (API,
audited); one nobody acknowledges in time escalates by e-mail to the next contact, from the
router's periodic pass, and stops once acknowledged."""

from __future__ import annotations

import dataclasses
import datetime as dt
from email import message_from_bytes

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import Engine

from raddraft.db import session_scope
from raddraft.job_contract import NotifyCritical
from raddraft.settings import Settings
from report_drafts.content import ReportContent
from report_drafts.reconcile import critical_labels
from report_drafts.tables import AuditEvent, CriticalNotification, Role
from report_drafts.users import add_user
from tests.conftest import reload_settings
from tests.drafts.conftest import draft_content
from tests.drafts.test_critical import Inbox, notices, record, smtp, smtp_port  # noqa: F401
from web import create_web_app
from worker import exporter, router

TERMS = ["pneumothorax", "pneumoperitoneum"]


def _content(**texts: str) -> ReportContent:
    base = draft_content("1.2.3")
    return dataclasses.replace(
        base,
        findings=(),
        findings_text=texts.get("findings", ""),
        impression=texts.get("impression", ""),
        progression=texts.get("progression", ""),
    )


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ({"progression": "New small right apical pneumothorax since the prior."}, ["pneumothorax"]),
        ({"findings": "No evidence of pneumothorax."}, []),
        ({"impression": "The right pneumothorax has resolved."}, []),
        ({"progression": "Pneumothorax, resolved."}, []),
        ({"findings": "Cannot exclude a small pneumothorax."}, ["pneumothorax (uncertain)"]),
        ({"impression": "Pneumothorax cannot be excluded."}, ["pneumothorax (uncertain)"]),
        (
            {"findings": "Possible pneumothorax.", "progression": "New pneumothorax."},
            ["pneumothorax"],
        ),
        (
            {"findings": "No pneumothorax, free subdiaphragmatic pneumoperitoneum."},
            ["pneumoperitoneum"],
        ),
    ],
)
def test_critical_findings_in_every_text_with_negation_and_uncertainty(
    texts: dict[str, str], expected: list[str]
) -> None:
    assert critical_labels(_content(**texts), TERMS) == expected


def _wire(monkeypatch: pytest.MonkeyPatch, smtp_port: int) -> Settings:  # noqa: F811
    monkeypatch.setenv("RADDRAFT_CRITICAL_SMTP", f"127.0.0.1:{smtp_port}")
    monkeypatch.setenv("RADDRAFT_CRITICAL_EMAIL_TO", "icu@hospital.test")
    monkeypatch.setenv("RADDRAFT_CRITICAL_ESCALATION_CONTACTS", "chief@h.test, director@h.test")
    monkeypatch.setenv("RADDRAFT_CRITICAL_ACK_TIMEOUT_MINUTES", "1")
    return reload_settings()


def _progression_critical(sop_uid: str) -> ReportContent:
    return dataclasses.replace(
        draft_content(sop_uid), progression="New large left pneumothorax since the prior."
    )


def _age(engine: Engine, seconds: float) -> None:
    """Move every delivered notice's clock back, as if ``seconds`` had passed."""
    with session_scope(engine) as session:
        for row in session.scalars(select(CriticalNotification)):
            if row.sent_at is not None:
                row.sent_at -= dt.timedelta(seconds=seconds)
            if row.escalated_at is not None:
                row.escalated_at -= dt.timedelta(seconds=seconds)


def test_delivered_is_not_acknowledged_escalation_until_a_person_acknowledges(
    engine: Engine,
    settings: Settings,
    smtp: Inbox,  # noqa: F811
    smtp_port: int,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _wire(monkeypatch, smtp_port)
    report_pk, _version_pk = record(engine, settings, _progression_critical)
    (notice,) = notices(engine)
    assert notice.labels == ["pneumothorax"]
    exporter.notify_critical_job(0, NotifyCritical(notice.id))
    (notice,) = notices(engine)
    # The relay's 250 makes it delivered; nobody has acknowledged it.
    assert notice.state == "sent" and (notice.ack or "").startswith("250")
    assert notice.acknowledged_at is None and notice.acknowledged_by is None

    # Not acknowledged in time: the router's pass escalates to the first contact, then the next.
    _age(engine, 120)
    assert router.escalate_critical(settings) == 1
    assert router.escalate_critical(settings) == 0  # not again before the next timeout
    first = notices(engine)[-1]
    assert first.escalation_of == notice.id
    exporter.notify_critical_job(0, NotifyCritical(first.id))
    _age(engine, 120)
    assert router.escalate_critical(settings) == 1
    second = notices(engine)[-1]
    exporter.notify_critical_job(0, NotifyCritical(second.id))
    recipients = [rcpt for _from, rcpt, _body in smtp.messages]
    assert recipients == [["icu@hospital.test"], ["chief@h.test"], ["director@h.test"]]
    subject = message_from_bytes(smtp.messages[1][2])["Subject"]
    assert "ESCALATION 1, not acknowledged" in subject
    _age(engine, 120)
    assert router.escalate_critical(settings) == 0  # the contact list has ended

    with session_scope(engine) as session:
        _reader, reader_token = add_user(session, "viewer", Role.reader, display_name="V^R")
        _rad, rad_token = add_user(session, "house", Role.radiologist, display_name="House^G")
    api = TestClient(create_web_app(settings))
    url = f"/api/critical-notifications/{notice.id}/acknowledge"
    refused = api.post(url, headers={"Authorization": f"Bearer {reader_token}"})
    assert refused.status_code == 403
    done = api.post(url, headers={"Authorization": f"Bearer {rad_token}"})
    assert done.status_code == 200, done.text
    assert done.json()["acknowledged_by"] == "house"
    again = api.post(url, headers={"Authorization": f"Bearer {rad_token}"})
    assert again.status_code in (400, 409, 422) and "house" in again.text

    rows = notices(engine)
    assert all(r.acknowledged_by == "house" and r.acknowledged_at for r in rows)
    with session_scope(engine) as session:
        (event,) = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "critical_acknowledged")
        )
        assert event.actor == "house" and event.report_pk == report_pk
        delivered = [
            e.detail
            for e in session.scalars(select(AuditEvent).where(AuditEvent.action == "notify"))
        ]
        assert delivered and all(d["delivered"] and "ack" not in d for d in delivered)
        escalated = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "critical_escalated")
        ).all()
        assert [e.detail["to"] for e in escalated] == ["chief@h.test", "director@h.test"]

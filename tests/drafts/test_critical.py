"""Critical findings: a draft suspecting one is STAT at once, marked in HL7 and FHIR, and its
notices reach a real MLLP receiver and a real SMTP server (aiosmtpd), acknowledged or retried."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from hl7apy.parser import parse_message
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.engine import Engine

from raddraft import jobs
from raddraft.db import session_scope
from raddraft.job_contract import NotifyCritical
from raddraft.settings import Settings
from report_drafts import drafting
from report_drafts.content import Finding, ReportContent
from report_drafts.outbox import fhir_resources
from report_drafts.reconcile import critical_labels
from report_drafts.tables import CriticalNotification, Report, ReportVersion, SentObject
from tests.conftest import free_port, reload_settings
from tests.drafts.conftest import ALGORITHM, ROOT, RUN, archive_study, draft_content
from tests.mllp_listener import Listener, listener  # noqa: F401
from web import queue_status
from worker import exporter
from worker.errors import TransientError


class Inbox:
    """aiosmtpd handler: keeps every message; answers 250 like a relay."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_port() -> int:
    return free_port()


def start_smtp(port: int) -> tuple[Controller, Inbox]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, inbox


@pytest.fixture
def smtp(smtp_port: int) -> Iterator[Inbox]:
    controller, inbox = start_smtp(smtp_port)
    yield inbox
    controller.stop()


def wire(monkeypatch: pytest.MonkeyPatch, ris_port: int, smtp_port: int) -> Settings:
    monkeypatch.setenv("RADDRAFT_RIS_MLLP", f"127.0.0.1:{ris_port}")
    monkeypatch.setenv("RADDRAFT_FHIR_SERVER_URL", "http://127.0.0.1:9/fhir")
    monkeypatch.setenv("RADDRAFT_CRITICAL_MLLP", f"127.0.0.1:{ris_port}")
    monkeypatch.setenv("RADDRAFT_CRITICAL_SMTP", f"127.0.0.1:{smtp_port}")
    monkeypatch.setenv("RADDRAFT_CRITICAL_EMAIL_TO", "icu@hospital.test, oncall@hospital.test")
    return reload_settings()


def critical_content(sop_uid: str) -> ReportContent:
    content = draft_content(sop_uid)
    pneumothorax = Finding(
        tracking_uid=generate_uid(prefix=ROOT), label="Pneumothorax", laterality="right"
    )
    return dataclasses.replace(
        content,
        findings=(*content.findings, pneumothorax),
        findings_text="Large right pneumothorax. Small left pleural effusion.",
    )


def record(engine: Engine, settings: Settings, content_for: Any) -> tuple[int, int]:
    study = archive_study(engine, settings)
    with session_scope(engine) as session:
        row = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=content_for(study.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=settings,
        )
        return row.report_pk, row.id


def notices(engine: Engine) -> list[CriticalNotification]:
    with session_scope(engine) as session:
        return list(session.scalars(select(CriticalNotification).order_by(CriticalNotification.id)))


def test_a_critical_draft_is_stat_marked_and_notified(
    engine: Engine,
    settings: Settings,
    listener: tuple[Listener, int],  # noqa: F811
    smtp: Inbox,
    smtp_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, ris_port = listener
    settings = wire(monkeypatch, ris_port, smtp_port)
    report_pk, version_pk = record(engine, settings, critical_content)

    with session_scope(engine) as session:
        report = session.get(Report, report_pk)
        assert report is not None and report.priority == jobs.Priority.stat
        version = session.get(ReportVersion, version_pk)
        assert version is not None
        assert version.content["extra"]["critical"] == ["pneumothorax"]
        # Every job of the draft is STAT, the notices' jobs included.
        queued = list(session.scalars(select(jobs.Job)))
        assert queued and all(job.priority == jobs.Priority.stat for job in queued)
        resource = fhir_resources(session, settings, version)["DiagnosticReport"]
        tags = {(t.system, t.code) for t in resource.meta.tag}
        assert ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "AA") in tags
        assert ("urn:raddraft:flag", "ai-critical-suspicion") in tags
        assert "pending radiologist review" in (resource.conclusion or "")
        ris = session.scalar(select(SentObject).where(SentObject.kind == "hl7"))
        assert ris is not None
        ris_text = (settings.data_dir / "outbox" / ris.path).read_bytes().decode()
    ris_message = parse_message(ris_text, find_groups=False)
    obr = next(s for s in ris_message.children if s.name == "OBR")
    assert obr.obr_5.to_er7() == "S"
    flags = {
        s.obx_8.to_er7()
        for s in ris_message.children
        if s.name == "OBX" and s.obx_2.to_er7() == "TX"
    }
    assert flags == {"AA"}

    rows = notices(engine)
    assert [(r.channel, r.state) for r in rows] == [("hl7", "pending"), ("email", "pending")]
    with session_scope(engine) as session:
        keys = set(session.scalars(select(jobs.Job.key)))
    assert {NotifyCritical(r.id).key for r in rows} <= keys

    for row in rows:
        exporter.notify_critical_job(0, NotifyCritical(row.id))
    sent = notices(engine)
    assert [(r.state, r.attempts) for r in sent] == [("sent", 1), ("sent", 1)]
    assert sent[0].ack == "AA"
    assert sent[1].ack is not None and sent[1].ack.startswith("250")

    assert len(state.received) == 1
    notice_hl7 = state.received[0]
    assert "AI suspicion of a critical finding (pneumothorax)" in notice_hl7
    assert "not a diagnosis" in notice_hl7
    assert len(smtp.messages) == 1
    _mail_from, rcpt, raw = smtp.messages[0]
    assert sorted(rcpt) == ["icu@hospital.test", "oncall@hospital.test"]
    mail = message_from_bytes(raw)
    assert "AI suspicion, pending review: pneumothorax" in mail["Subject"]
    assert "not a diagnosis" in mail.get_payload(decode=True).decode()

    # A second run of a sent notice sends nothing again.
    exporter.notify_critical_job(0, NotifyCritical(rows[1].id))
    assert len(smtp.messages) == 1

    # The queue page's figures list the notices with their acknowledgements.
    with session_scope(engine) as session:
        figures = queue_status.queue_figures(session, settings)
    listed = figures["critical_notifications"]
    assert {(n["channel"], n["state"]) for n in listed} == {("hl7", "sent"), ("email", "sent")}
    json.dumps(figures)


def test_a_notice_is_retried_until_the_smtp_server_is_back(
    engine: Engine,
    settings: Settings,
    listener: tuple[Listener, int],  # noqa: F811
    smtp_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _state, ris_port = listener
    settings = wire(monkeypatch, ris_port, smtp_port)
    record(engine, settings, critical_content)
    mail = next(r for r in notices(engine) if r.channel == "email")
    # The relay is down: a transient failure, recorded, for the job runner to retry.
    with pytest.raises(TransientError):
        exporter.notify_critical_job(0, NotifyCritical(mail.id))
    failed = next(r for r in notices(engine) if r.id == mail.id)
    assert (failed.state, failed.attempts) == ("failed", 1) and failed.last_error
    controller, inbox = start_smtp(smtp_port)
    try:
        exporter.notify_critical_job(0, NotifyCritical(mail.id))
    finally:
        controller.stop()
    done = next(r for r in notices(engine) if r.id == mail.id)
    assert (done.state, done.attempts) == ("sent", 2)
    assert len(inbox.messages) == 1


def test_a_draft_without_a_critical_finding_stays_routine(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = wire(monkeypatch, free_port(), free_port())
    report_pk, _ = record(engine, settings, draft_content)
    with session_scope(engine) as session:
        report = session.get(Report, report_pk)
        assert report is not None and report.priority == jobs.Priority.routine
    assert notices(engine) == []


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("No pneumothorax. Small effusion.", [], []),
        ("Small right apical pneumothorax.", [], ["pneumothorax"]),
        ("Tension pneumothorax on the left.", [], ["tension pneumothorax"]),
        ("Free air under the right hemidiaphragm.", [], ["free air"]),
        (
            "The endotracheal tube is malpositioned in the right main bronchus.",
            [],
            ["malpositioned"],
        ),
        ("Lines and tubes are not malpositioned.", [], []),
        ("Clear lungs.", ["Pneumothorax"], ["pneumothorax"]),
    ],
)
def test_critical_labels(text: str, labels: list[str], expected: list[str]) -> None:
    content = ReportContent(
        findings_text=text,
        impression="",
        findings=tuple(
            Finding(tracking_uid=f"1.2.{i}", label=label) for i, label in enumerate(labels)
        ),
    )
    assert critical_labels(content, Settings().critical_findings) == expected


def test_the_critical_draft_tops_the_worklist_and_its_page_says_stat(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from report_drafts.tables import Role
    from report_drafts.users import add_user
    from tests.drafts.test_no_silent_loss import PASSWORD, _review_page
    from web import create_web_app

    monkeypatch.setenv("RADDRAFT_WEB_SECRET", "test-secret-not-for-production")
    settings = wire(monkeypatch, free_port(), free_port())
    routine, _ = record(engine, settings, draft_content)
    critical, _ = record(engine, settings, critical_content)
    with session_scope(engine) as session:
        _u, token = add_user(
            session, "rad", Role.radiologist, display_name="House^G", password=PASSWORD
        )
    with TestClient(create_web_app(settings)) as client:
        items = client.get("/api/worklist", headers={"Authorization": f"Bearer {token}"}).json()
        assert [i["id"] for i in items["items"]][:2] == [critical, routine]
        suspected = {i["id"]: i["critical"] for i in items["items"]}
        assert suspected[critical] == ["pneumothorax"] and suspected[routine] == []
        page = _review_page(client, critical)
        assert page.count('flag-urgent small">urgent<') == 1  # the pneumothorax, not the effusion
        assert 'data-testid="critical-banner"' in page
        assert "AI suspicion of a critical finding" in page and "not a diagnosis" in page
        quiet = _review_page(client, routine)
        assert 'data-testid="critical-banner"' not in quiet
        assert 'flag-urgent small">urgent<' not in quiet

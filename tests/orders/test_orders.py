"""The order listener over a real MLLP connection, on PostgreSQL and SQLite: orders stored,
matched by accession before or after the images, STAT raising, cancellation stopping drafting,
and every malformed or refused message answered AE/AR with its raw text kept."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import Engine

import orders
from orders.tables import Order, OrderMessage
from raddraft import job_contract, jobs
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts import drafting, order_effects, version_reads
from report_drafts.tables import Report
from tests.conftest import free_port, reload_settings
from tests.drafts.conftest import (
    ALGORITHM,
    RUN,
    archive_study,
    auth,
    draft_content,
    tokens,  # noqa: F401
)
from tests.hl7_strict import strict_errors
from worker import pipeline

START, END = b"\x0b", b"\x1c\x0d"


def msh(kind: str, control: str, facility: str = "GENHOSP", version: str = "2.5.1") -> str:
    return f"MSH|^~\\&|RIS|{facility}|RADDRAFT|RAD|20261202101500||{kind}|{control}|P|{version}"


def fields(name: str, values: dict[int, str]) -> str:
    """A segment with field n at position n (so the tests name HL7 field numbers)."""
    top = max(values)
    return "|".join([name, *(values.get(n, "") for n in range(1, top + 1))])


def orm(
    control: str,
    *,
    accession: str = "ACC0001",
    order_control: str = "NW",
    priority: str = "R",
    reason: str = "Shortness of breath",
    kind: str = "ORM^O01^ORM_O01",
    facility: str = "GENHOSP",
) -> str:
    segments = [
        msh(kind, control, facility),
        fields("PID", {1: "1", 3: "P0001^^^HOSP^MR", 5: "Doe^Jane"}),
        fields(
            "ORC",
            {1: order_control, 2: "PL77", 3: "FL77", 7: f"^^^^^{priority}", 12: "1234^Smith^John"},
        ),
        fields(
            "OBR",
            {
                1: "1",
                2: "PL77",
                3: "FL77",
                4: "CXR^Chest XR",
                16: "1234^Smith^John",
                18: accession,
                27: f"^^^^^{priority}",
                31: f"^{reason}",
            },
        ),
    ]
    return "\r".join(segments)


class Client:
    """A real MLLP client: one connection, many messages, each answered before the next."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send(self, message: str | bytes) -> dict[str, list[str]]:
        data = message.encode() if isinstance(message, str) else message
        self.sock.sendall(START + data + END)
        buffer = b""
        while END not in buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before the ACK"
            buffer += chunk
        text = buffer[buffer.index(START) + 1 : buffer.index(END)].decode()
        segments = {s.split("|")[0]: s.split("|") for s in text.split("\r") if s}
        # Every ACK is read as a strict HL7 v2.5.1 client reads it. An ACK to a message whose
        # MSH-10 could not be read has no control id to echo: MSA-2 stays empty there.
        errors = strict_errors(text)
        if segments.get("MSA", ["", "", ""])[2] == "":
            errors = [e for e in errors if "MSA.MSA_2" not in e]
        assert not errors, (errors, text)
        return segments

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, Client]]:
    monkeypatch.setenv("RADDRAFT_ORDERS_HOST", "127.0.0.1")
    monkeypatch.setenv("RADDRAFT_ORDERS_PORT", str(free_port()))
    monkeypatch.setenv("RADDRAFT_ORDERS_ALLOWED_FACILITIES", "GENHOSP,NORTHCLINIC")
    wired = reload_settings()
    listener = orders.OrderServer(wired)
    listener.start()
    client = Client(listener.port)
    try:
        yield wired, client
    finally:
        client.close()
        listener.shutdown()
        listener.server_close()


def stored(engine: Engine) -> list[OrderMessage]:
    with session_scope(engine) as session:
        return list(session.scalars(select(OrderMessage).order_by(OrderMessage.id)))


def test_an_order_before_the_images_gives_the_draft_its_indication_and_priority(
    engine: Engine, server: tuple[Settings, Client]
) -> None:
    settings, client = server
    ack = client.send(orm("M1", priority="S"))
    assert ack["MSA"][1:3] == ["AA", "M1"]
    assert ack["MSH"][8] == "ACK^O01^ACK" and 0 < len(ack["MSH"][9]) <= 20  # MSH-9, MSH-10
    assert ack["MSH"][2:6] == ["RADDRAFT", "RAD", "RIS", "GENHOSP"]  # sender and receiver swapped
    with session_scope(engine) as session:
        order = orders.order_for_accession(session, "ACC0001")
    assert order is not None
    assert (order.indication, order.priority, order.cancelled) == ("Shortness of breath", 0, False)
    assert order.ordering_provider == "1234^Smith^John"
    assert order.patient_id == "P0001"

    # The images come later: the header says routine; the order's STAT wins when drafting.
    study = archive_study(engine, settings, priority=jobs.Priority.routine)
    with session_scope(engine) as session:
        info = orders.order_for_accession(session, "ACC0001")
        assert pipeline._order_allows(session, study.study_version_pk, info)
    with session_scope(engine) as session:
        report = session.scalar(select(Report))
        assert report is not None and report.priority == jobs.Priority.stat


def test_a_stat_order_after_the_images_moves_the_queued_draft_forward(
    engine: Engine, server: tuple[Settings, Client]
) -> None:
    settings, client = server
    study = archive_study(engine, settings)
    with session_scope(engine) as session:
        job_contract.enqueue(session, job_contract.DraftStudy(study.study_version_pk))
        order_effects.order_for_draft(
            session, study.study_version_pk, priority=None, cancelled=False
        )
    assert client.send(orm("M2", priority="S"))["MSA"][1] == "AA"
    with session_scope(engine) as session:
        draft = session.scalar(
            select(jobs.Job).where(jobs.Job.task == job_contract.DraftStudy.TASK)
        )
        assert draft is not None and draft.priority == jobs.Priority.stat
        apply = session.scalar(
            select(jobs.Job).where(jobs.Job.task == job_contract.ApplyOrder.TASK)
        )
        assert apply is not None
        args = job_contract.arguments_of(apply.task, apply.args)
    assert isinstance(args, job_contract.ApplyOrder)
    assert pipeline.apply_order_job(apply.id, args)["reports"]
    with session_scope(engine) as session:
        report = session.scalar(select(Report))
        assert report is not None and report.priority == jobs.Priority.stat


def test_a_cancelled_order_stops_drafting_and_marks_the_sent_draft(
    engine: Engine,
    server: tuple[Settings, Client],
    tokens: dict[str, str],  # noqa: F811
) -> None:
    settings, client = server
    queued = archive_study(engine, settings, accession="ACC0002", patient_id="P0002")
    drafted = archive_study(engine, settings, accession="ACC0003", patient_id="P0003")
    with session_scope(engine) as session:
        job_contract.enqueue(session, job_contract.DraftStudy(queued.study_version_pk))
        row = drafting.record_draft(
            session,
            study_version_pk=drafted.study_version_pk,
            content=draft_content(drafted.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=settings,
        )
        drafted_report = row.report_pk
    assert client.send(orm("M3", accession="ACC0002", order_control="CA"))["MSA"][1] == "AA"
    assert client.send(orm("M4", accession="ACC0003", order_control="OC"))["MSA"][1] == "AA"
    with session_scope(engine) as session:
        draft_job = session.scalar(
            select(jobs.Job).where(
                jobs.Job.key == job_contract.DraftStudy(queued.study_version_pk).key
            )
        )
        assert draft_job is not None and draft_job.state == jobs.JobState.done
        assert draft_job.timings == {"skipped": "order cancelled"}
        # A worker that got the broker message anyway cannot claim it.
        assert not jobs.claim(session, draft_job.id, "w1", dt.timedelta(seconds=60))
        applies = list(
            session.scalars(select(jobs.Job).where(jobs.Job.task == job_contract.ApplyOrder.TASK))
        )
    for job in applies:
        args = job_contract.arguments_of(job.task, job.args)
        assert isinstance(args, job_contract.ApplyOrder)
        pipeline.apply_order_job(job.id, args)
    with session_scope(engine) as session:
        report = session.get(Report, drafted_report)
        assert report is not None and report.order_cancelled_at is not None
        # The unsigned draft is withdrawn, as a rejection would withdraw it.
        assert (report.state, report.current_version) == ("rejected", 2)
        withdrawal = version_reads.version(session, drafted_report, 2)
        assert withdrawal.action == "order_cancelled" and "ORC-1 OC" in withdrawal.note
        # The draft job itself refuses to draft a cancelled order.
        info = orders.order_for_accession(session, "ACC0002")
        assert info is not None and info.cancelled
        assert not pipeline._order_allows(session, queued.study_version_pk, info)
        stopped = session.scalar(
            select(Report).where(Report.study_version_pk == queued.study_version_pk)
        )
        assert stopped is not None and stopped.state == "failed"
        assert "order cancelled" in (stopped.failure or "")
    # And nobody signs it.
    from web.api import create_app

    with TestClient(create_app(settings)) as api:
        rad = auth(tokens["rad"])
        detail = api.get(f"/api/reports/{drafted_report}", headers=rad).json()
        assert detail["order_cancelled_at"] is not None
        assert detail["order"]["cancelled"] is True
        assert detail["order"]["ordering_provider"] == "1234^Smith^John"
        # FHIR shows the withdrawal the RIS was sent, not the preliminary draft.
        uid = detail["uid"]
        shown = api.get(f"/fhir/DiagnosticReport/{uid}", headers=rad).json()
        assert shown["status"] == "entered-in-error"
        found = api.get(
            "/fhir/DiagnosticReport", params={"status": "entered-in-error"}, headers=rad
        ).json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [uid]
        assert found["total"] == 1
        answer = api.post(
            f"/api/reports/{drafted_report}/sign",
            json={"expected_version": detail["current_version"], "edit_reason": "none"},
            headers=rad,
        )
    assert answer.status_code == 409
    assert "order was cancelled" in answer.text


def test_omi_o23_takes_the_accession_from_ipc_1(
    engine: Engine, server: tuple[Settings, Client]
) -> None:
    _settings, client = server
    message = (
        orm("M5", kind="OMI^O23^OMI_O23", accession="")
        + "\r"
        + fields("IPC", {1: "ACC0099", 2: "RP1", 3: "1.2.3.4", 4: "SPS1"})
    )
    assert client.send(message)["MSA"][1] == "AA"
    with session_scope(engine) as session:
        assert orders.order_for_accession(session, "ACC0099") is not None


@pytest.mark.parametrize(
    ("message", "code", "why"),
    [
        (b"this is not HL7", "AR", "no MSH segment"),
        (orm("M6", accession="").replace("FL77", ""), "AE", "no accession number"),
        (orm("M7", facility="ELSEWHERE"), "AR", "sending facility ELSEWHERE is not allowed"),
        (msh("ADT^A01^ADT_A01", "M8") + "\rPID|1||P1", "AR", "message type ADT A01 is not taken"),
        ("\r".join(s for s in orm("M9").split("\r") if not s.startswith("PID")), "AE", "no PID"),
    ],
)
def test_bad_messages_get_a_clear_negative_ack_and_are_kept(
    engine: Engine, server: tuple[Settings, Client], message: str | bytes, code: str, why: str
) -> None:
    _settings, client = server
    ack = client.send(message)
    assert ack["MSA"][1] == code
    assert why in ack["MSA"][3]
    assert ack["ERR"][4] == "E" and why in ack["ERR"][8]
    assert ack["ERR"][3].endswith("^HL70357")
    # The connection stays usable after a refusal.
    assert client.send(orm("OK1", accession="ACC0500"))["MSA"][1] == "AA"
    kept = stored(engine)
    raw = message.decode() if isinstance(message, bytes) else message
    assert kept[0].raw == raw and kept[0].ack_code == code and why in (kept[0].error or "")
    with session_scope(engine) as session:
        assert session.scalar(select(Order).where(Order.accession_number == "ACC0500")) is not None


def test_a_stat_order_before_the_images_raises_the_draft_job_the_listener_queues(
    engine: Engine, server: tuple[Settings, Client]
) -> None:
    settings, client = server
    assert client.send(orm("M10", accession="ACC0777", priority="S"))["MSA"][1] == "AA"
    study = archive_study(engine, settings, accession="ACC0777", priority=jobs.Priority.routine)
    other = archive_study(engine, settings, accession="ACC0778", patient_id="P0778")
    with session_scope(engine) as session:
        # What the listener does on completion: the header's (routine) priority.
        job_contract.enqueue(session, job_contract.DraftStudy(study.study_version_pk))
        job_contract.enqueue(session, job_contract.DraftStudy(other.study_version_pk))
    with session_scope(engine) as session:
        assert orders.raise_waiting_drafts(session) == 1
    with session_scope(engine) as session:
        by_key = {j.key: j.priority for j in session.scalars(select(jobs.Job))}
        assert orders.raise_waiting_drafts(session) == 0  # once is enough
    assert by_key[job_contract.DraftStudy(study.study_version_pk).key] == jobs.Priority.stat
    assert by_key[job_contract.DraftStudy(other.study_version_pk).key] == jobs.Priority.routine


def test_an_order_for_another_patient_is_not_used(
    engine: Engine, server: tuple[Settings, Client]
) -> None:
    import dicom_listener

    settings, client = server
    study = archive_study(engine, settings, accession="ACC0888", patient_id="P0888")
    assert client.send(orm("M11", accession="ACC0888"))["MSA"][1] == "AA"  # PID-3 P0001
    with session_scope(engine) as session:
        info = dicom_listener.study_for_version(session, study.study_version_pk)
        assert orders.order_for_accession(session, "ACC0888") is not None
        assert pipeline.matching_order(session, info) is None
    same = archive_study(engine, settings, accession="ACC0889", patient_id="P0001")
    assert client.send(orm("M12", accession="ACC0889"))["MSA"][1] == "AA"
    with session_scope(engine) as session:
        info = dicom_listener.study_for_version(session, same.study_version_pk)
        found = pipeline.matching_order(session, info)
    assert found is not None and found.indication == "Shortness of breath"


def test_the_ack_to_a_long_sending_application_is_strictly_valid(
    server: tuple[Settings, Client],
) -> None:
    """HL7 v2.5.1 2.A.36: an HD namespace ID is at most 20 characters. A sender's longer MSH-3
    echoed whole into the ACK's MSH-5 made the ACK one a strict reader refuses (the client's
    strict check in :meth:`Client.send`)."""
    _settings, client = server
    long_app = "RADIOLOGY-INFORMATION-SYSTEM-01"
    message = orm("LONG1", accession="ACC0600").replace("MSH|^~\\&|RIS|", f"MSH|^~\\&|{long_app}|")
    ack = client.send(message)
    assert ack["MSA"][1:3] == ["AA", "LONG1"]
    assert ack["MSH"][4] == long_app[:20]

"""ATNA audit records (raddraft/atna.py) received by a real rsyslogd: TLS with octet counting
(RFC 5425) from the running listener, UDP (RFC 5426) from the web app's sign-in; the test
reads what rsyslog wrote and parses the DICOM audit message XML (PS3.15 A.5)."""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from raddraft import atna
from raddraft.settings import Settings
from report_drafts import signoff, version_reads
from report_drafts.tables import User
from tests.certs import certificates
from tests.conftest import reload_settings
from tests.dicom_factory import make_study
from tests.listener_process import ListenerProcess, echoscu, storescu
from tests.pages.seed import PASSWORD, seed
from tests.syslog_collector import Rsyslog
from web import create_web_app


def _messages(lines: list[str], transport: str) -> list[ET.Element]:
    found = []
    for line in lines:
        name, pri, app, msgid, xml = line.split("|", 4)
        if name != transport:
            continue
        assert (pri, app, msgid) == ("85", "raddraft", "IHE+RFC-3881"), line[:200]
        found.append(ET.fromstring(xml.strip().encode()))
    return found


def _event(message: ET.Element) -> str:
    node = message.find("EventIdentification/EventID")
    assert node is not None
    return node.attrib["csd-code"]


@pytest.fixture
def collector(tmp_path: Path) -> object:
    certs = certificates(tmp_path)
    with Rsyslog(tmp_path, certs) as rsyslog:
        yield rsyslog, certs


def test_the_listener_audits_transfers_and_refusals_over_tls(
    settings: Settings, engine: Engine, tmp_path: Path, collector: tuple[Rsyslog, dict[str, Path]]
) -> None:
    rsyslog, certs = collector
    env = {
        "RADDRAFT_ATNA_COLLECTOR": f"127.0.0.1:{rsyslog.tls_port}",
        "RADDRAFT_ATNA_TRANSPORT": "tls",
        "RADDRAFT_ATNA_TLS_CA": str(certs["ca"]),
        "RADDRAFT_ATNA_TLS_CERT": str(certs["client_crt"]),
        "RADDRAFT_ATNA_TLS_KEY": str(certs["client_key"]),
    }
    study = tmp_path / "study"
    study.mkdir()
    ids, files = make_study(study, views=("PA", "LATERAL"))
    with ListenerProcess(tmp_path / "listener.log", env=env).start() as listener:
        sent = storescu(listener.port, files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        refused = echoscu(listener.port, aet="INTRUDER")
        assert refused.returncode != 0
        lines = rsyslog.wait_for(2)
    messages = _messages(lines, "imtcp")
    events = sorted(_event(m) for m in messages)
    assert events == ["110104", "110113"], lines

    transferred = next(m for m in messages if _event(m) == "110104")
    assert transferred.find("EventIdentification").attrib["EventActionCode"] == "C"
    source = transferred.find("ActiveParticipant[@UserIsRequestor='true']")
    assert source is not None and source.attrib["UserID"] == "STORESCU"
    study_object = transferred.find(
        f"ParticipantObjectIdentification[@ParticipantObjectID='{ids.study_uid}']"
    )
    assert study_object is not None
    counts = [int(c.attrib["NumberOfInstances"]) for c in study_object.iter("SOPClass")]
    assert sum(counts) == len(files)
    patient = transferred.find("ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']")
    assert patient is not None and patient.attrib["ParticipantObjectID"] == ids.patient_id

    alert = next(m for m in messages if _event(m) == "110113")
    assert alert.find("EventIdentification/EventTypeCode").attrib["csd-code"] == "110126"
    assert alert.find("EventIdentification").attrib["EventOutcomeIndicator"] == "4"
    assert alert.find("ActiveParticipant").attrib["UserID"] == "INTRUDER"


def test_sign_in_and_out_are_audited_over_udp(
    settings: Settings,
    engine: Engine,
    collector: tuple[Rsyslog, dict[str, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rsyslog, _certs = collector
    monkeypatch.setenv("RADDRAFT_ATNA_COLLECTOR", f"127.0.0.1:{rsyslog.udp_port}")
    monkeypatch.setenv("RADDRAFT_ATNA_TRANSPORT", "udp")
    monkeypatch.setenv("RADDRAFT_WEB_SECRET", "test-secret-not-for-production")
    monkeypatch.setenv("RADDRAFT_DESTINATIONS", "PACS@127.0.0.1:1")  # what seed expects
    web_settings = reload_settings()
    seeded = seed(web_settings, engine)
    with TestClient(create_web_app(web_settings)) as client:
        form = client.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token
        wrong = {"csrf_token": token[1], "username": "curie", "password": "not-it"}
        assert client.post("/login", data=wrong, follow_redirects=False).status_code == 401
        form = client.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token
        good = {"csrf_token": token[1], "username": "curie", "password": PASSWORD}
        assert client.post("/login", data=good, follow_redirects=False).status_code == 303
        page = client.get("/worklist").text
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
        assert csrf
        out = client.post("/logout", data={"csrf_token": csrf[1]}, follow_redirects=False)
        assert out.status_code == 303
    assert atna.flush(10)
    messages = _messages(rsyslog.wait_for(3), "imudp")
    assert seeded is not None
    summary = [
        (
            _event(m),
            m.find("EventIdentification/EventTypeCode").attrib["originalText"],
            m.find("EventIdentification").attrib["EventOutcomeIndicator"],
            m.find("ActiveParticipant[@UserIsRequestor='true']").attrib["UserID"],
        )
        for m in messages
    ]
    assert summary == [
        ("110114", "Login", "4", "curie"),
        ("110114", "Login", "0", "curie"),
        ("110114", "Logout", "0", "curie"),
    ]


def test_report_view_and_sign_off_are_audited_on_commit(
    settings: Settings,
    engine: Engine,
    collector: tuple[Rsyslog, dict[str, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rsyslog, _certs = collector
    monkeypatch.setenv("RADDRAFT_ATNA_COLLECTOR", f"127.0.0.1:{rsyslog.udp_port}")
    monkeypatch.setenv("RADDRAFT_ATNA_TRANSPORT", "udp")
    monkeypatch.setenv("RADDRAFT_DESTINATIONS", "PACS@127.0.0.1:1")  # what seed expects
    wired = reload_settings()
    seeded = seed(wired, engine)
    with Session(engine) as session:
        curie = session.scalars(select(User).where(User.name == "curie")).one()
        report = signoff.open_report(session, seeded.routine_report, curie)
        session.rollback()  # rolled back: no record may go out
        assert atna.flush(5)
        report = signoff.open_report(session, seeded.routine_report, curie)
        session.commit()
        version = report.current_version
        signoff.sign(
            session,
            seeded.routine_report,
            curie,
            expected_version=version,
            edit_reason="none",
            settings=wired,
        )
        session.commit()
        study_uid = version_reads.study_uid(
            session, version_reads.get_report(session, seeded.routine_report)
        )
    assert atna.flush(10)
    messages = _messages(rsyslog.wait_for(2), "imudp")
    assert [
        (_event(m), m.find("EventIdentification").attrib["EventActionCode"]) for m in messages
    ] == [
        ("110103", "R"),
        ("110110", "U"),
    ]
    for message in messages:
        assert (
            message.find("ActiveParticipant[@UserIsRequestor='true']").attrib["UserID"] == "curie"
        )
        ids = [
            o.attrib["ParticipantObjectID"] for o in message.iter("ParticipantObjectIdentification")
        ]
        names = [n.text for n in message.iter("ParticipantObjectName")]
        assert study_uid in ids + names
    # Patient Record (A.5.3.10): the patient as a person in role patient with a Patient Number,
    # the report version as a Report Number (RFC 3881 code 9), never as a Study Instance UID.
    record = messages[1]
    patients = [
        o
        for o in record.iter("ParticipantObjectIdentification")
        if (o.attrib["ParticipantObjectTypeCode"], o.attrib["ParticipantObjectTypeCodeRole"])
        == ("1", "1")
    ]
    assert [p.attrib["ParticipantObjectID"] for p in patients] == ["RD0077"]  # the seed's
    assert patients[0].find("ParticipantObjectIDTypeCode").attrib["csd-code"] == "2"
    assert patients[0].find("ParticipantObjectName").text == "ROE^RICHARD"
    report_ids = {
        o.attrib["ParticipantObjectID"]: o.find("ParticipantObjectIDTypeCode").attrib["csd-code"]
        for o in record.iter("ParticipantObjectIdentification")
        if o.attrib["ParticipantObjectTypeCodeRole"] == "3"
    }
    with Session(engine) as session:
        uid = version_reads.get_report(session, seeded.routine_report).uid
    assert report_ids == {uid: "9", study_uid: "110180"}

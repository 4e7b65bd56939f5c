"""What RadDraft sends is audited (IHE ATNA, PS3.15 A.5.3): SR/GSPS stored to a real Orthanc as
DICOM Instances Transferred, the ORU^R01 to a real MLLP listener and the FHIR resources to an
HTTP FHIR server as Export; a send that fails as a minor failure. rsyslog receives them, and
every message passes the PS3.15 A.5.1 schema and its event's rules (tests/syslog_collector.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from sqlalchemy.engine import Engine

from raddraft import atna
from raddraft.job_contract import NotifyCritical
from raddraft.settings import DicomNode, Settings
from tests.certs import certificates
from tests.conftest import free_port
from tests.drafts import test_critical as critical
from tests.drafts.test_critical import Inbox, smtp, smtp_port  # noqa: F401 (fixtures)
from tests.fhir_server import FhirServer
from tests.mllp_listener import Listener
from tests.orthanc import OrthancServer
from tests.syslog_collector import Rsyslog
from tests.worker.test_exporter import (
    EXPORT_DICOM,
    PUSH_FHIR,
    SEND_HL7,
    _draft,
    _rows,
    _run,
    _wire,
    fhir,  # noqa: F401 (a fixture)
)
from worker import exporter
from worker.errors import TransientError


@pytest.fixture
def rsyslog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rsyslog]:
    with Rsyslog(tmp_path, certificates(tmp_path)) as collector:
        monkeypatch.setenv("RADDRAFT_ATNA_COLLECTOR", f"127.0.0.1:{collector.udp_port}")
        monkeypatch.setenv("RADDRAFT_ATNA_TRANSPORT", "udp")
        yield collector


def _received(collector: Rsyslog, count: int) -> list[ET.Element]:
    assert atna.flush(10)
    lines = collector.wait_for(count)
    assert len(lines) == count, lines
    return [ET.fromstring(line.split("|", 4)[4].strip().encode()) for line in lines]


def _event(message: ET.Element) -> tuple[str, str, str]:
    node = message.find("EventIdentification")
    assert node is not None
    return (
        node.find("EventID").attrib["csd-code"],  # type: ignore[union-attr]
        node.attrib["EventActionCode"],
        node.attrib["EventOutcomeIndicator"],
    )


def _participant(message: ET.Element, role: str) -> dict[str, str]:
    for node in message.iter("ActiveParticipant"):
        code = node.find("RoleIDCode")
        if code is not None and code.attrib["csd-code"] == role:
            return dict(node.attrib)
    raise AssertionError(f"no participant in role {role}")


def _objects(message: ET.Element) -> dict[str, tuple[str, str, str]]:
    """ParticipantObjectID -> (type code, role, ID type code)."""
    return {
        node.attrib["ParticipantObjectID"]: (
            node.attrib["ParticipantObjectTypeCode"],
            node.attrib["ParticipantObjectTypeCodeRole"],
            node.find("ParticipantObjectIDTypeCode").attrib["csd-code"],  # type: ignore[union-attr]
        )
        for node in message.iter("ParticipantObjectIdentification")
    }


def test_stores_hl7_and_fhir_sends_are_audited(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    orthanc: OrthancServer,
    listener: tuple[Listener, int],
    fhir: FhirServer,  # noqa: F811 (the fixture)
    rsyslog: Rsyslog,
) -> None:
    _ris, ris_port = listener
    wired = _wire(monkeypatch, orthanc.dicom_node, ris_port, fhir.url)
    version_pk, made = _draft(engine, wired)
    rows = _rows(engine, version_pk)
    control_id = next(r.identifier for r in rows if r.kind == "hl7")
    fhir_ids = [r.identifier for r in rows if r.kind == "fhir"]

    assert _run(made[EXPORT_DICOM])["sent"] == 2
    assert _run(made[SEND_HL7])["sent"] == 1
    assert _run(made[PUSH_FHIR])["sent"] == len(fhir_ids)
    stored, hl7, pushed = _received(rsyslog, 3)

    # C-STORE of the SR and GSPS: Instances Transferred, RadDraft the Source and requestor.
    assert _event(stored) == ("110104", "R", "0")
    source = _participant(stored, "110153")
    assert (source["UserID"], source["UserIsRequestor"]) == (wired.ae_title, "true")
    destination = _participant(stored, "110152")
    assert (destination["UserID"], destination["NetworkAccessPointID"]) == (
        orthanc.aet,
        "127.0.0.1",
    )
    study_uid = orthanc.instance_tags(next(r.identifier for r in rows if r.kind == "sr"))[
        "StudyInstanceUID"
    ]
    objects = _objects(stored)
    assert objects[study_uid] == ("2", "3", "110180")
    patients = [oid for oid, kinds in objects.items() if kinds == ("1", "1", "2")]
    assert len(patients) == 1
    counts = [int(c.attrib["NumberOfInstances"]) for c in stored.iter("SOPClass")]
    assert sorted(counts) == [1, 1]  # one SR, one GSPS

    # The ORU^R01: Export to the RIS, the patient and the report by its MSH-10.
    assert _event(hl7) == ("110106", "R", "0")
    assert _participant(hl7, "110152")["UserID"] == f"127.0.0.1:{ris_port}"
    assert _objects(hl7) == {patients[0]: ("1", "1", "2"), control_id: ("2", "3", "9")}

    # The FHIR resources: Export to the server, each resource by its URL.
    assert _event(pushed) == ("110106", "R", "0")
    assert _objects(pushed) == {
        patients[0]: ("1", "1", "2"),
        **{f"{fhir.url.rstrip('/')}/{i}": ("2", "3", "12") for i in fhir_ids},
    }


def test_a_failed_store_is_audited_as_a_minor_failure(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
    fhir: FhirServer,  # noqa: F811 (the fixture)
    rsyslog: Rsyslog,
) -> None:
    _ris, ris_port = listener
    down = DicomNode("PACS", "127.0.0.1", free_port())
    wired = _wire(monkeypatch, down, ris_port, fhir.url)
    _version_pk, made = _draft(engine, wired)
    with pytest.raises(TransientError):
        _run(made[EXPORT_DICOM])
    (failed,) = _received(rsyslog, 1)
    assert _event(failed) == ("110104", "R", "4")
    assert _participant(failed, "110152")["UserID"] == "PACS"


def test_a_critical_notice_over_hl7_is_audited_and_its_email_is_not(
    engine: Engine,
    settings: Settings,
    listener: tuple[Listener, int],
    smtp: Inbox,  # noqa: F811 (the fixture)
    smtp_port: int,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
    rsyslog: Rsyslog,
) -> None:
    _ris, ris_port = listener
    wired = critical.wire(monkeypatch, ris_port, smtp_port)
    critical.record(engine, wired, critical.critical_content)
    rows = critical.notices(engine)
    assert [r.channel for r in rows] == ["hl7", "email"]
    for row in rows:
        exporter.notify_critical_job(0, NotifyCritical(row.id))
    assert len(smtp.messages) == 1
    (notice,) = _received(rsyslog, 1)
    assert _event(notice) == ("110106", "R", "0")
    assert _participant(notice, "110152")["UserID"] == f"127.0.0.1:{ris_port}"
    assert _objects(notice)[rows[0].identifier] == ("2", "3", "9")

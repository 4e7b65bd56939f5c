"""The prior-study C-FIND to a real PACS (Orthanc) is audited as an ATNA Query (PS3.15
A.5.3.12) to a real rsyslogd over UDP, with the query keys attached."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from pydicom.filereader import read_dataset

from peers.dicom_scu import find_prior_studies
from raddraft import atna
from tests.certs import certificates
from tests.conftest import reload_settings
from tests.orthanc import OrthancServer
from tests.peers.conftest import RADDRAFT_AE
from tests.peers.test_priors import PATIENT
from tests.syslog_collector import Rsyslog


@pytest.fixture
def udp_collector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rsyslog]:
    with Rsyslog(tmp_path, certificates(tmp_path)) as rsyslog:
        monkeypatch.setenv("RADDRAFT_ATNA_COLLECTOR", f"127.0.0.1:{rsyslog.udp_port}")
        monkeypatch.setenv("RADDRAFT_ATNA_TRANSPORT", "udp")
        reload_settings()
        yield rsyslog
    monkeypatch.delenv("RADDRAFT_ATNA_COLLECTOR")
    reload_settings()


def test_prior_query_is_audited(orthanc: OrthancServer, udp_collector: Rsyslog) -> None:
    find_prior_studies(
        orthanc.dicom_node,
        calling_ae=RADDRAFT_AE,
        patient_id=PATIENT,
        before_date="20240901",
        timeout=10,
    )
    assert atna.flush(10)
    lines = [line for line in udp_collector.wait_for(1) if line.startswith("imudp|")]
    assert len(lines) == 1, lines
    message = ET.fromstring(lines[0].split("|", 4)[4].encode())
    event = message.find("EventIdentification")
    assert event is not None and event.attrib["EventOutcomeIndicator"] == "0"
    assert message.find("EventIdentification/EventID").attrib["csd-code"] == "110112"
    destination = message.find("ActiveParticipant[@UserIsRequestor='false']")
    assert destination is not None and destination.attrib["UserID"] == orthanc.dicom_node.ae_title
    query = message.find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert query is not None and query.text
    keys = read_dataset(BytesIO(base64.b64decode(query.text)), True, True)
    assert keys.PatientID == PATIENT and keys.StudyDate == "-20240901"

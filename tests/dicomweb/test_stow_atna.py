"""STOW-RS stores are audited like C-STOREs: one DICOM Instances Transferred record (PS3.15
A.5.3.4, event 110104, action C) per patient, the sending user as its source, the study with its
instance count, received by a real rsyslogd over UDP; a request that stored nothing sends none."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from raddraft import atna
from raddraft.settings import Settings
from tests import hostile
from tests.certs import certificates
from tests.conftest import reload_settings
from tests.dicom_factory import make_study
from tests.dicomweb.test_stow_limits import CONTENT_TYPE, related
from tests.listener.test_atna import _event, _messages
from tests.pages.conftest import LiveServer
from tests.syslog_collector import Rsyslog
from web import create_web_app


def test_a_stow_store_sends_instances_transferred_and_a_refused_one_nothing(
    settings: Settings,
    engine: Engine,
    tmp_path: Path,
    tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with Rsyslog(tmp_path, certificates(tmp_path)) as rsyslog:
        monkeypatch.setenv("RADDRAFT_ATNA_COLLECTOR", f"127.0.0.1:{rsyslog.udp_port}")
        monkeypatch.setenv("RADDRAFT_ATNA_TRANSPORT", "udp")
        ids, files = make_study(tmp_path / "study", views=("PA", "LATERAL"))
        headers = {"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {tokens['sender']}"}
        with LiveServer(create_web_app(reload_settings())) as web:
            refused = related(hostile.with_uids("../../x", "1.2.3", "1.2.3.4"))
            answer = httpx.post(f"{web.url}/dicomweb/studies", content=refused, headers=headers)
            assert answer.status_code == 409
            body = related(*(Path(f).read_bytes() for f in files))
            answer = httpx.post(f"{web.url}/dicomweb/studies", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
        assert atna.flush(10)
        lines = rsyslog.wait_for(1)
    messages = _messages(lines, "imudp")
    assert [_event(m) for m in messages] == ["110104"], lines
    transferred = messages[0]
    assert transferred.find("EventIdentification").attrib["EventActionCode"] == "C"
    source = transferred.find("ActiveParticipant[@UserIsRequestor='true']")
    assert source is not None and source.attrib["UserID"] == "gateway"
    assert source.attrib.get("NetworkAccessPointID") == "127.0.0.1"
    study = transferred.find(
        f"ParticipantObjectIdentification[@ParticipantObjectID='{ids.study_uid}']"
    )
    assert study is not None
    assert sum(int(c.attrib["NumberOfInstances"]) for c in study.iter("SOPClass")) == len(files)
    patient = transferred.find("ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']")
    assert patient is not None and patient.attrib["ParticipantObjectID"] == ids.patient_id

"""DICOMweb reads are audited (IHE ATNA, PS3.15 A.5.3): a QIDO-RS search as a Query (A.5.3.12)
with the reading user the Source and requestor and the search itself as the query; a WADO-RS
retrieve or metadata read as DICOM Instances Transferred (A.5.3.4) from RadDraft to that user,
the study with its instance count and the patient; a read that finds nothing sends none. A real
rsyslogd receives them, and every message passes the A.5.1 schema (tests/syslog_collector.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from raddraft import atna
from raddraft.settings import Settings
from tests.certs import certificates
from tests.conftest import reload_settings
from tests.dicom_factory import make_study
from tests.dicomweb.test_stow_limits import CONTENT_TYPE, related
from tests.listener.test_atna import _event, _messages
from tests.pages.conftest import LiveServer
from tests.syslog_collector import Rsyslog
from web import create_web_app


def test_qido_searches_and_wado_reads_are_audited(
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
        sender = {"Authorization": f"Bearer {tokens['sender']}"}
        reader = {"Authorization": f"Bearer {tokens['reader']}"}
        with LiveServer(create_web_app(reload_settings())) as web:
            body = related(*(Path(f).read_bytes() for f in files))
            stored = httpx.post(
                f"{web.url}/dicomweb/studies",
                content=body,
                headers={**sender, "Content-Type": CONTENT_TYPE},
            )
            assert stored.status_code == 200, stored.text
            found = httpx.get(
                f"{web.url}/dicomweb/studies", params={"PatientID": ids.patient_id}, headers=reader
            )
            assert found.status_code == 200 and len(found.json()) == 1
            study = f"{web.url}/dicomweb/studies/{ids.study_uid}"
            retrieved = httpx.get(
                study, headers={**reader, "Accept": 'multipart/related; type="application/dicom"'}
            )
            assert retrieved.status_code == 200
            assert httpx.get(f"{study}/metadata", headers=reader).status_code == 200
            missing = httpx.get(f"{web.url}/dicomweb/studies/1.2.3/metadata", headers=reader)
            assert missing.status_code == 404
        assert atna.flush(10)
        lines = rsyslog.wait_for(4)
    messages = _messages(lines, "imudp")
    assert [_event(m) for m in messages] == ["110104", "110112", "110104", "110104"], lines

    search = messages[1]
    source = search.find("ActiveParticipant[@UserIsRequestor='true']")
    assert source is not None and source.attrib["UserID"] == "reader"
    assert source.find("RoleIDCode").attrib["csd-code"] == "110153"
    query = search.find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert base64.b64decode(query.text).decode() == f"/dicomweb/studies?PatientID={ids.patient_id}"

    for read in messages[2:]:
        assert read.find("EventIdentification").attrib["EventActionCode"] == "R"
        user = read.find("ActiveParticipant[@UserIsRequestor='true']")
        assert user is not None and user.attrib["UserID"] == "reader"
        assert user.find("RoleIDCode").attrib["csd-code"] == "110152"  # the destination
        study_object = read.find(
            f"ParticipantObjectIdentification[@ParticipantObjectID='{ids.study_uid}']"
        )
        assert study_object is not None
        counts = [int(c.attrib["NumberOfInstances"]) for c in study_object.iter("SOPClass")]
        assert sum(counts) == len(files)
        patient = read.find("ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']")
        assert patient is not None and patient.attrib["ParticipantObjectID"] == ids.patient_id

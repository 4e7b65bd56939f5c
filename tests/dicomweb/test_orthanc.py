"""DICOMweb with Orthanc's DICOMweb plugin, both ways.

In: Orthanc is given RadDraft as a remote DICOMweb server and queries (QIDO-RS) and retrieves
(WADO-RS) a pushed study and RadDraft's SR and GSPS through ``/dicom-web/servers/raddraft``.
Out: RadDraft's ``stow`` destination kind stores SR and GSPS into Orthanc by STOW-RS, through
the exporter's export job; a server that is down is a transient failure and the retry
delivers; a refusal is permanent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from sqlalchemy import select
from sqlalchemy.engine import Engine

from peers import Outbound, StowPermanentError, StowSender, StowTransientError
from raddraft import job_contract
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts.tables import ReportVersion, SentObject
from tests.conftest import reload_settings
from tests.dicom_factory import make_study
from tests.drafts.helpers import make_draft
from tests.orthanc import OrthancServer
from tests.pages.conftest import LiveServer
from worker import exporter
from worker.errors import TransientError


def test_orthanc_queries_and_retrieves_from_raddraft(
    settings: Settings,
    engine: Engine,
    web: LiveServer,
    tokens: dict[str, str],
    tmp_path: Path,
    orthanc_factory: Callable[..., OrthancServer],
) -> None:
    ids, paths = make_study(tmp_path / "study", ("PA", "LATERAL"))
    sender = DICOMwebClient(
        url=f"{web.url}/dicomweb", headers={"Authorization": f"Bearer {tokens['sender']}"}
    )
    sender.store_instances([pydicom.dcmread(p) for p in paths])
    _report, drafted = make_draft(engine, settings, patient_id="P0099")
    pacs = orthanc_factory(
        dicomweb_servers={
            "raddraft": {
                "Url": f"{web.url}/dicomweb/",
                "HttpHeaders": {"Authorization": f"Bearer {tokens['reader']}"},
            }
        }
    )

    def get(uri: str, **arguments: str) -> Any:
        body = {"Uri": uri, "Arguments": arguments}
        answer = pacs.rest("/dicom-web/servers/raddraft/get", method="POST", json=body)
        # Orthanc passes RadDraft's application/dicom+json through as it came.
        return json.loads(answer) if isinstance(answer, bytes) else answer

    studies = get("/studies", PatientID=ids.patient_id)
    assert [s["0020000D"]["Value"][0] for s in studies] == [ids.study_uid]
    series = get(f"/studies/{drafted.study_instance_uid}/series")
    assert {s["00080060"]["Value"][0] for s in series} == {"DX", "SR", "PR"}

    for study_uid in (ids.study_uid, drafted.study_instance_uid):
        pacs.rest(
            "/dicom-web/servers/raddraft/retrieve",
            method="POST",
            json={"Resources": [{"Study": study_uid}]},
        )
    assert pacs.study_instance_uids(ids.study_uid) == {
        pydicom.dcmread(p).SOPInstanceUID for p in paths
    }
    with session_scope(engine) as session:
        version = session.scalars(select(ReportVersion)).one()
        ours = {version.sr_sop_instance_uid, *version.gsps_sop_instance_uids}
    held = pacs.study_instance_uids(drafted.study_instance_uid)
    assert ours <= held and set(drafted.sop_instance_uids) <= held
    sr = pacs.instance_tags(str(version.sr_sop_instance_uid))
    assert sr["Modality"] == "SR"


@pytest.fixture
def stow_pacs(orthanc_factory: Callable[..., OrthancServer]) -> OrthancServer:
    """Orthanc serving DICOMweb (its plugin) as a STOW-RS destination."""
    return orthanc_factory(dicomweb_servers={})


def test_stow_destination_exports_sr_and_gsps_and_retries_a_server_that_was_down(
    settings: Settings,
    engine: Engine,
    stow_pacs: OrthancServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"{stow_pacs.url}/dicom-web"
    monkeypatch.setenv("RADDRAFT_STOW_DESTINATIONS", url)
    settings = reload_settings()
    _report, study = make_draft(engine, settings)
    with session_scope(engine) as session:
        rows = session.scalars(select(SentObject).where(SentObject.destination == url)).all()
        assert {row.kind for row in rows} == {"sr", "gsps"}
        version_pk = rows[0].report_version_pk
        uids = {row.identifier for row in rows}
    job = job_contract.ExportDicom(version_pk, url)

    stow_pacs.stop()
    with pytest.raises(TransientError):
        exporter.export_dicom_job(1, job)
    stow_pacs.start()
    assert exporter.export_dicom_job(1, job)["sent"] == len(uids)

    assert uids <= stow_pacs.study_instance_uids(study.study_instance_uid)
    with session_scope(engine) as session:
        states = {
            (row.state, row.attempts)
            for row in session.scalars(select(SentObject).where(SentObject.destination == url))
        }
    assert states == {("sent", 2)}


def test_stow_refusals_are_permanent(stow_pacs: OrthancServer, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file")
    with pytest.raises(StowPermanentError) as refused:
        StowSender(f"{stow_pacs.url}/dicom-web").send([Outbound("1.2.3", junk)])
    assert refused.value.failed == ("1.2.3",)
    _ids, paths = make_study(tmp_path / "study", ("PA",))
    with pytest.raises(StowPermanentError) as missing:
        StowSender(f"{stow_pacs.url}/no-such-service").send([Outbound("1.2.4", paths[0])])
    assert missing.value.http_status == 404


def test_stow_unreachable_is_transient(tmp_path: Path) -> None:
    from tests.conftest import free_port

    _ids, paths = make_study(tmp_path / "study", ("PA",))
    with pytest.raises(StowTransientError):
        StowSender(f"http://127.0.0.1:{free_port()}/dicom-web").send([Outbound("1.2.5", paths[0])])


def test_orthanc_stores_into_raddraft_by_stow_rs(
    settings: Settings,
    engine: Engine,
    web: LiveServer,
    tokens: dict[str, str],
    tmp_path: Path,
    orthanc_factory: Callable[..., OrthancServer],
) -> None:
    """Orthanc as a STOW-RS client (a PACS forwarding by DICOMweb): a two-view study lands in
    the archive, recorded, and completes at the end of the request like a C-STORE push."""
    from dicom_listener import Instance, StudyVersion

    ids, paths = make_study(tmp_path / "study", ("PA", "LATERAL"))
    pacs = orthanc_factory(
        dicomweb_servers={
            "raddraft-in": {
                "Url": f"{web.url}/dicomweb/",
                "HttpHeaders": {"Authorization": f"Bearer {tokens['sender']}"},
            }
        }
    )
    for path in paths:
        pacs.upload(path)
    study_id = pacs.study_id(ids.study_uid)
    pacs.rest("/dicom-web/servers/raddraft-in/stow", method="POST", json={"Resources": [study_id]})
    sent = {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}
    with session_scope(engine) as session:
        assert set(session.scalars(select(Instance.sop_instance_uid))) == sent
        version = session.scalars(select(StudyVersion)).one()
        assert (version.state, version.eligible) == ("complete", True)

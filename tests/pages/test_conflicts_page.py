"""Instance conflicts (a SOP Instance UID received again with other content, PS3.7 C.4.2
status 0x0111) are shown to administrators on the queue page and in its ``data.json``: the
newest 20, each with when, the UID, the sender and the attributes that differed. The queue is
an administrator's page (the role table's ``administer``): a reader or radiologist gets 403.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation
from sqlalchemy.engine import Engine

from dicom_listener import InstanceConflict
from dicom_listener.scp import Listener
from raddraft.db import session_scope
from raddraft.settings import Settings
from tests.conftest import free_port, reload_settings
from tests.dicom_factory import make_cxr
from tests.pages.seed import PASSWORD, Seeded
from web import create_web_app, queue_status

UID = "1.2.826.0.1.3680043.10.1077.20.77"


@pytest.fixture
def listening_settings(pages_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RADDRAFT_ALLOWED_CALLERS", "*")
    return reload_settings()


def send_conflict(settings: Settings) -> None:
    """The same SOP Instance UID twice through the real listener, the second for another
    patient: stored, then refused as a duplicate with other content."""
    first = make_cxr(None, rows=64, cols=64, sop_uid=UID)
    second = copy.deepcopy(first)  # Dataset.copy() shares the elements
    second.PatientID = "SOMEONE-ELSE"
    second.PatientName = "OTHER^PATIENT"
    listener = Listener(settings).start(port=free_port(), host="127.0.0.1")
    try:
        ae = AE(ae_title="CONFLICTSCU")
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title=settings.ae_title)
        assert assoc.is_established
        assert assoc.send_c_store(first).Status == 0x0000
        assert assoc.send_c_store(second).Status == 0x0111
        assoc.release()
    finally:
        listener.stop()


def sign_in(client: TestClient, username: str) -> None:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    response = client.post(
        "/login",
        data={"csrf_token": token.group(1), "username": username, "password": PASSWORD},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def test_the_queue_page_shows_instance_conflicts_to_administrators_only(
    listening_settings: Settings, seeded: Seeded, engine: Engine, tmp_path: Path
) -> None:
    send_conflict(listening_settings)
    app = create_web_app(listening_settings)

    with TestClient(app) as client:
        sign_in(client, seeded.users["admin"].name)
        page = client.get("/queue")
        assert page.status_code == 200
        table = page.text.split('data-testid="instance-conflicts"', 1)
        assert len(table) == 2, "no conflicts table on the queue page"
        row = table[1].split("</tr>", 2)[1]  # the header row, then the first conflict
        assert UID in row and "CONFLICTSCU" in row and "PatientID, PatientName" in row
        listed = client.get("/queue/data.json").json()["instance_conflicts"]
        assert [(c["sop_instance_uid"], c["calling_ae_title"]) for c in listed] == [
            (UID, "CONFLICTSCU")
        ]
        assert listed[0]["attributes"] == ["PatientID", "PatientName"]
        assert listed[0]["at"] and listed[0]["peer"].startswith("127.0.0.1:")

    for role in ("reader", "radiologist"):
        with TestClient(app) as client:
            sign_in(client, seeded.users[role].name)
            assert client.get("/queue").status_code == 403
            assert client.get("/queue/data.json").status_code == 403


def test_the_queue_page_lists_only_the_newest_conflicts(
    pages_settings: Settings, seeded: Seeded, engine: Engine
) -> None:
    many = queue_status.CONFLICT_LIMIT + 5
    with session_scope(engine) as session:
        for n in range(many):
            session.add(
                InstanceConflict(
                    sop_instance_uid=f"1.2.3.{n}", calling_ae_title="MOD", differences={"Rows": {}}
                )
            )
    with TestClient(create_web_app(pages_settings)) as client:
        sign_in(client, seeded.users["admin"].name)
        listed = client.get("/queue/data.json").json()["instance_conflicts"]
        page = client.get("/queue").text
    expected = [f"1.2.3.{n}" for n in range(many - 1, many - 1 - queue_status.CONFLICT_LIMIT, -1)]
    assert [c["sop_instance_uid"] for c in listed] == expected
    assert "1.2.3.4<" not in page and f"1.2.3.{many - 1}<" in page

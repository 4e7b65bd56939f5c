"""A SOP Instance UID stored again with other content is a recorded conflict, not a silent
success (issue 20, item 11): the archived instance stays, the new copy is quarantined, one
``instance_conflicts`` row says which attributes differed, the C-STORE is answered 0x0111
(PS3.7 C.4.2), and ``raddraft studies conflicts`` shows it. A true resend is still success.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from click.testing import CliRunner
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import dicom_listener
from dicom_listener.tables import IngestEvent, Instance, Patient
from raddraft.cli import main
from raddraft.settings import Settings
from tests import hostile
from tests.dicom_factory import make_cxr
from tests.listener_process import ListenerProcess

_BASE = make_cxr(None, rows=64, cols=64, sop_uid="1.2.826.0.1.3680043.10.1077.20.11")


def _bytes(**changes: str) -> bytes:
    ds = copy.deepcopy(_BASE)  # Dataset.copy() shares the elements
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_a_duplicate_uid_with_another_patient_is_a_recorded_conflict(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    with ListenerProcess(tmp_path / "listener.log").start() as listener:
        assert hostile.send_part10(listener.port, _bytes(), tmp_path) == 0x0000
        # The same instance again: a resend, stored once, success.
        assert hostile.send_part10(listener.port, _bytes(), tmp_path) == 0x0000
        other = _bytes(PatientID="SOMEONE-ELSE", PatientName="OTHER^PATIENT")
        assert hostile.send_part10(listener.port, other, tmp_path) == 0x0111
        assert "duplicate SOP instance with other content" in listener.log_text()

    with Session(engine) as session:
        assert session.scalar(select(Patient.patient_id)) == "RD0001"  # the archive kept its own
        assert len(session.scalars(select(Instance)).all()) == 1
        found = dicom_listener.instance_conflicts(session)
        event = session.scalars(select(IngestEvent).where(IngestEvent.kind == "conflict")).one()
    assert len(found) == 1
    conflict = found[0]
    assert conflict.sop_instance_uid == "1.2.826.0.1.3680043.10.1077.20.11"
    assert conflict.calling_ae_title == "MODALITY" and conflict.status == 0x0111
    assert conflict.differences == {
        "PatientID": {"stored": "RD0001", "received": "SOMEONE-ELSE"},
        "PatientName": {"stored": "TEST^CHEST", "received": "OTHER^PATIENT"},
    }
    assert Path(conflict.quarantined).is_file()
    assert "PatientID" in Path(conflict.quarantined).with_suffix(".txt").read_text()
    assert event.status == 0x0111 and "PatientID" in event.detail["differences"]

    listing = CliRunner().invoke(main, ["studies", "conflicts", "--json"])
    assert listing.exit_code == 0, listing.output
    rows = json.loads(listing.output)
    assert rows[0]["differences"]["PatientID"]["received"] == "SOMEONE-ELSE"
    text = CliRunner().invoke(main, ["studies", "conflicts"])
    assert "PatientID: stored 'RD0001', received 'SOMEONE-ELSE'" in text.output
    assert CliRunner().invoke(main, ["studies", "--json"]).exit_code == 0  # the list still works

"""Patient identity is Patient ID with its Issuer (0010,0021); a study whose header gives another
name, birth date or sex than the patient held under that identity is an identity conflict:
flagged on the worklist and review page with its own header's demographics, its RIS messages
held until an administrator resolves it (API, audited). Through the real listener (storescu)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dicom_listener import IdentityConflict, Instance, Patient, Study
from raddraft import jobs
from raddraft.cli import main
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts import drafting
from report_drafts.outbox import IDENTITY_HOLD
from report_drafts.tables import AuditEvent, Role, SentObject
from report_drafts.users import add_user
from tests.dicom_factory import StudyIds, make_cxr
from tests.drafts.conftest import ALGORITHM, RUN, draft_content
from tests.listener.conftest import complete_versions
from tests.listener_process import ListenerProcess, storescu
from web import create_web_app


def _push(
    listener: ListenerProcess,
    folder: Path,
    ids: StudyIds,
    *,
    issuer: str = "",
    sex: str = "F",
) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, view in enumerate(("PA", "LATERAL"), start=1):
        ds = make_cxr(
            None,
            patient_id=ids.patient_id,
            patient_name=ids.patient_name,
            study_uid=ids.study_uid,
            series_uid=ids.series_uid,
            accession=ids.accession,
            view=view,
            instance_number=number,
        )
        ds.PatientSex = sex
        if issuer:
            ds.IssuerOfPatientID = issuer
        path = folder / f"{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    assert storescu(listener.port, paths).returncode == 0
    CliRunner().invoke(main, ["study", "complete", ids.study_uid])
    return ids.study_uid


def _signed_in(client: TestClient, token: str) -> None:
    form = client.get("/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf
    client.post("/login", data={"csrf_token": csrf.group(1), "token": token})


def test_identity_conflict_is_flagged_held_and_resolved_by_an_administrator(
    listener: ListenerProcess, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    first = StudyIds(patient_id="ID-SHARED", patient_name="DOE^JANE", accession="ACC-A")
    _push(listener, tmp_path / "a", first)
    # Another hospital's patient with the same ID: another issuer, another patient, no conflict.
    other_issuer = dataclasses.replace(
        StudyIds(), patient_id="ID-SHARED", patient_name="ROE^RICHARD", accession="ACC-C"
    )
    _push(listener, tmp_path / "c", other_issuer, issuer="OTHER-HOSPITAL", sex="M")
    # Same ID, same (empty) issuer, another name and sex: a conflict.
    second = dataclasses.replace(
        StudyIds(), patient_id="ID-SHARED", patient_name="SMITH^JOHN", accession="ACC-B"
    )
    _push(listener, tmp_path / "b", second, sex="M")

    with session_scope(engine) as session:
        patients = {
            (p.issuer_of_patient_id, p.patient_name)
            for p in session.scalars(select(Patient).where(Patient.patient_id == "ID-SHARED"))
        }
        assert patients == {("", "DOE^JANE"), ("OTHER-HOSPITAL", "ROE^RICHARD")}
        (conflict,) = session.scalars(select(IdentityConflict))
        study = session.get(Study, conflict.study_pk)
        assert study is not None and study.study_instance_uid == second.study_uid
        assert (conflict.received_name, conflict.received_sex) == ("SMITH^JOHN", "M")
        assert (conflict.held_name, conflict.held_sex) == ("DOE^JANE", "F")
        conflict_id = conflict.id
        _rad, rad_token = add_user(session, "rad", Role.radiologist, display_name="House^G")
        _admin, admin_token = add_user(session, "boss", Role.admin, display_name="Boss^A")

    wired = settings.model_copy(
        update={"ris_mllp": "127.0.0.1:2575", "release_unsigned_hl7": "send"}
    )
    (version,) = complete_versions(engine, second.study_uid)
    with session_scope(engine) as session:
        sop_uid = session.scalar(
            select(Instance.sop_instance_uid).where(Instance.version_pk == version.id).limit(1)
        )
        assert sop_uid
        row = drafting.record_draft(
            session,
            study_version_pk=version.id,
            content=draft_content(sop_uid),
            run=RUN,
            algorithm=ALGORITHM,
            settings=wired,
        )
        report_id, version_pk = row.report_pk, row.id
    with session_scope(engine) as session:
        (hl7,) = session.scalars(
            select(SentObject).where(
                SentObject.report_version_pk == version_pk, SentObject.kind == "hl7"
            )
        )
        assert (hl7.state, hl7.last_error) == ("held", IDENTITY_HOLD)

    app = create_web_app(wired)
    api = TestClient(app)
    rad = {"Authorization": f"Bearer {rad_token}"}
    admin = {"Authorization": f"Bearer {admin_token}"}
    detail = api.get(f"/api/reports/{report_id}", headers=rad).json()
    # The study's own header, not the held patient's name, and the conflict said.
    assert detail["patient_name"] == "SMITH^JOHN" and detail["patient_sex"] == "M"
    assert detail["identity_conflict"]["held"]["patient_name"] == "DOE^JANE"
    items = api.get("/api/worklist", headers=rad).json()["items"]
    (item,) = [i for i in items if i["id"] == report_id]
    assert item["identity_conflict"]["id"] == conflict_id
    pages = TestClient(app)
    _signed_in(pages, rad_token)
    assert 'data-testid="identity-flag"' in pages.get("/").text
    review = pages.get(f"/reports/{report_id}").text
    assert 'data-testid="identity-banner"' in review and "DOE^JANE" in review

    body = {"resolution": "same patient: the RIS corrected the name"}
    refused = api.post(
        f"/api/admin/identity-conflicts/{conflict_id}/resolve", json=body, headers=rad
    )
    assert refused.status_code == 403
    listed = api.get("/api/admin/identity-conflicts", headers=admin).json()
    assert [c["id"] for c in listed] == [conflict_id]
    resolved = api.post(
        f"/api/admin/identity-conflicts/{conflict_id}/resolve", json=body, headers=admin
    )
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["released"] == 1
    again = api.post(
        f"/api/admin/identity-conflicts/{conflict_id}/resolve", json=body, headers=admin
    )
    assert again.status_code in (400, 409, 422)
    assert api.get("/api/admin/identity-conflicts", headers=admin).json() == []

    with session_scope(engine) as session:
        hl7_row = session.get(SentObject, hl7.id)
        assert hl7_row is not None and hl7_row.state == "pending"
        keys = set(session.scalars(select(jobs.Job.key)))
        assert f"hl7:{version_pk}" in keys
        (event,) = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "identity_resolved")
        )
        assert event.actor == "boss" and event.study_instance_uid == second.study_uid
        assert event.detail["resolution"] == body["resolution"]
        resolved_conflict = session.get(IdentityConflict, conflict_id)
        assert resolved_conflict is not None and resolved_conflict.resolved_by == "boss"

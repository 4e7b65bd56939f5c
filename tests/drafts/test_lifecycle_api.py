"""The whole review lifecycle through the API: draft, open, edit, reject a finding, sign, amend."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from raddraft import jobs
from raddraft.db import session_scope
from raddraft.settings import DicomNode, Settings
from report_drafts import drafting, version_reads
from report_drafts.tables import ImmutableVersionError, ReportVersion, SentObject
from tests.drafts.conftest import ALGORITHM, RUN, archive_study, auth, draft_content
from web.api import create_app

DEST = DicomNode("PACS", "127.0.0.1", 11113)


@pytest.fixture
def wired(settings: Settings) -> Settings:
    """Settings with a PACS destination, a RIS and a FHIR server configured."""
    return settings.model_copy(
        update={
            "destinations": [DEST],
            "ris_mllp": "127.0.0.1:2575",
            "fhir_server_url": "http://fhir.example/fhir",
        }
    )


def _draft(engine: Engine, settings: Settings, **kw: Any) -> tuple[int, Any]:
    study = archive_study(engine, settings, **kw)
    with session_scope(engine) as session:
        row = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=draft_content(study.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=settings,
        )
        return row.report_pk, study


def _dciodvfy_errors(path: Any) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_full_lifecycle(engine: Engine, wired: Settings, tokens: dict[str, str]) -> None:
    report_id, study = _draft(engine, wired)
    client = TestClient(create_app(wired))
    rad = auth(tokens["rad"])

    # The worklist shows the draft; the detail has stages, findings, provenance, warnings.
    listing = client.get("/api/worklist", headers=auth(tokens["reader"])).json()
    assert [i["id"] for i in listing["items"]] == [report_id]
    assert listing["items"][0]["state"] == "drafted"
    detail = client.get(f"/api/reports/{report_id}", headers=rad).json()
    assert detail["state"] == "in_review"  # a radiologist's first view starts the review
    assert detail["current_version"] == 1
    assert len(detail["provenance"]["stages"]) == 8
    assert detail["provenance"]["stages"][0]["reasoning"] == "because 1"
    assert detail["prior"] == {"none": "no prior study in PACS"}
    assert "Unverified AI draft" in detail["warnings"][0]
    findings = detail["content"]["findings"]
    assert findings[0]["box"] == {"x0": 4, "y0": 30, "x1": 20, "y1": 60}
    draft_sr_uid = detail["version"]["sr_sop_instance_uid"]
    assert draft_sr_uid

    # Edit the impression, reject a finding.
    r = client.post(
        f"/api/reports/{report_id}/edit",
        json={"expected_version": 1, "impression": "Small left effusion."},
        headers=rad,
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"]["number"] == 2
    cardio = findings[1]["tracking_uid"]
    r = client.post(
        f"/api/reports/{report_id}/findings/{cardio}",
        json={"expected_version": 2, "action": "reject"},
        headers=rad,
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"]["number"] == 3

    # Sign.
    jobs_before = _job_keys(engine)
    r = client.post(
        f"/api/reports/{report_id}/sign",
        json={"expected_version": 3, "edit_reason": "content"},
        headers=rad,
    )
    assert r.status_code == 200, r.text
    signed = r.json()["version"]
    assert signed["number"] == 4 and signed["status"] == "final" and signed["state"] == "signed"
    assert signed["content"]["signer"]["name"] == "House^Gregory"
    assert signed["content"]["signer"]["login"] == "rad"
    assert signed["predecessor_sr_uid"] == draft_sr_uid
    assert signed["sr_sop_instance_uid"] not in (None, draft_sr_uid)
    assert signed["diff"]["findings_rejected"] == 1
    assert 0 < signed["diff"]["edit_ratio"] < 1

    # The final SR: new instance, verified, predecessor the draft, only accepted findings.
    sr_path = wired.data_dir / "outbox" / f"{signed['sr_sop_instance_uid']}.dcm"
    sr = pydicom.dcmread(sr_path)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE",
        "VERIFIED",
        "FINAL",
    )
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName == "House^Gregory"
    pred = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert pred.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == draft_sr_uid
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(sr_path) == []
        for uid in signed["gsps_sop_instance_uids"]:
            assert _dciodvfy_errors(wired.data_dir / "outbox" / f"{uid}.dcm") == []
    assert len(signed["gsps_sop_instance_uids"]) == 1

    # Exports enqueued exactly once, with the agreed keys.
    new_keys = _job_keys(engine) - jobs_before
    with session_scope(engine) as session:
        version_pk = session.scalars(
            select(ReportVersion.id).where(
                ReportVersion.report_pk == report_id, ReportVersion.number == 4
            )
        ).one()
    assert new_keys == {f"export:{version_pk}:{DEST}", f"hl7:{version_pk}", f"fhir:{version_pk}"}
    with session_scope(engine) as session:
        rows = {
            j.key: j for j in session.scalars(select(jobs.Job).where(jobs.Job.key.in_(new_keys)))
        }
        export = rows[f"export:{version_pk}:{DEST}"]
        assert export.task == "raddraft.export_dicom" and export.queue == "io"
        assert export.args == {"report_version_pk": version_pk, "destination": str(DEST)}
        assert rows[f"hl7:{version_pk}"].task == "raddraft.send_hl7"
        assert rows[f"fhir:{version_pk}"].task == "raddraft.push_fhir"
        pending = session.scalars(
            select(SentObject).where(
                SentObject.report_version_pk == version_pk,
                SentObject.destination == str(DEST),
                SentObject.state.in_(["pending", "failed"]),
            )
        )
        assert sorted(p.kind for p in pending) == ["gsps", "sr"]

    # Replays of the same sign request: refused, no second final.
    for expected in (3, 4):
        again = client.post(
            f"/api/reports/{report_id}/sign",
            json={"expected_version": expected, "edit_reason": "content"},
            headers=rad,
        )
        assert again.status_code == 409, again.text
    assert _job_keys(engine) - jobs_before == new_keys
    with session_scope(engine) as session:
        finals = session.scalars(
            select(ReportVersion).where(
                ReportVersion.report_pk == report_id, ReportVersion.status == "final"
            )
        ).all()
        assert len(finals) == 1

    # Amend: another SR whose predecessor is the signed one.
    r = client.post(
        f"/api/reports/{report_id}/amend",
        json={"expected_version": 4, "reason": "laterality", "impression": "Small right effusion."},
        headers=auth(tokens["rad2"]),
    )
    assert r.status_code == 200, r.text
    amended = r.json()["version"]
    assert amended["status"] == "amended" and amended["number"] == 5
    assert amended["predecessor_sr_uid"] == signed["sr_sop_instance_uid"]
    assert amended["content"]["signer"]["login"] == "rad2"
    amended_sr = pydicom.dcmread(
        wired.data_dir / "outbox" / f"{amended['sr_sop_instance_uid']}.dcm"
    )
    pred = amended_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert pred.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == signed["sr_sop_instance_uid"]

    # Versions are intact and immutable: every number once, the draft text unchanged.
    detail = client.get(f"/api/reports/{report_id}", headers=rad).json()
    assert [v["number"] for v in detail["versions"]] == [1, 2, 3, 4, 5]
    assert [v["action"] for v in detail["versions"]] == [
        "draft",
        "edit",
        "finding_reject",
        "sign",
        "amend",
    ]
    v1 = client.get(f"/api/reports/{report_id}/versions/1", headers=rad).json()
    assert v1["content"]["impression"] == "Small left pleural effusion."
    assert v1["status"] == "preliminary"

    # Audit trail by study: the view, edit, feedback, sign, amend are there with their actors.
    trail = client.get(f"/api/studies/{study.study_instance_uid}/audit", headers=rad).json()
    actions = [(e["actor"], e["action"]) for e in trail]
    for wanted in [
        ("raddraft", "draft"),
        ("rad", "view"),
        ("rad", "edit"),
        ("rad", "feedback"),
        ("rad", "sign"),
        ("rad2", "amend"),
    ]:
        assert wanted in actions

    # Trace from the SR UID, the GSPS UID and the HL7 control id.
    with session_scope(engine) as session:
        control = session.scalars(
            select(SentObject.identifier).where(
                SentObject.report_version_pk == version_pk, SentObject.kind == "hl7"
            )
        ).one()
    for identifier in (signed["sr_sop_instance_uid"], signed["gsps_sop_instance_uids"][0], control):
        found = client.get(f"/api/trace/{identifier}", headers=rad).json()
        assert found[0]["version"] == 4
        assert found[0]["signer"]["login"] == "rad"
        assert found[0]["model"] == "StanfordAIMI/CheXOne"
        assert found[0]["model_revision"] == "rev-abc123"
        assert len(found[0]["stages"]) == 8


def _job_keys(engine: Engine) -> set[str]:
    with session_scope(engine) as session:
        return set(session.scalars(select(jobs.Job.key)))


def test_versions_cannot_be_changed_even_by_sql(engine: Engine, settings: Settings) -> None:
    report_id, _study = _draft(engine, settings)
    with Session(engine) as session:
        row = version_reads.version(session, report_id, 1)
        row.note = "rewritten"
        with pytest.raises(ImmutableVersionError):
            session.flush()
        session.rollback()
    for statement in (
        "UPDATE report_versions SET status = 'final'",
        "DELETE FROM report_versions",
    ):
        with engine.connect() as conn, pytest.raises(DBAPIError):
            conn.execute(text(statement))
    with session_scope(engine) as session:
        assert version_reads.version(session, report_id, 1).status == "preliminary"


def test_record_draft_is_idempotent_and_supersedes(engine: Engine, settings: Settings) -> None:
    report_id, study = _draft(engine, settings)
    with session_scope(engine) as session:
        again = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=draft_content(study.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=settings,
        )
        assert (again.report_pk, again.number) == (report_id, 1)
        assert len(session.scalars(select(ReportVersion)).all()) == 1
    # A later study version's draft supersedes the unsigned earlier one.
    newer_id, _newer = _draft(
        engine, settings, study_uid=study.study_instance_uid, version_number=2
    )
    with session_scope(engine) as session:
        old = version_reads.get_report(session, report_id)
        assert old.state == "superseded" and old.superseded_by_pk == newer_id
        assert version_reads.current_version(session, old).action == "supersede"

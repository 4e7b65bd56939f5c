# FHIR models type every element Optional; the assertions below are the None checks.
# mypy: disable-error-code="union-attr,index"
"""FHIR read/search, image renderings, worklist order and filters, admin actions, the CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.provenance import Provenance
from PIL import Image
from sqlalchemy import select
from sqlalchemy.engine import Engine

from raddraft import jobs
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts import drafting, version_reads
from report_drafts.content import Algorithm
from report_drafts.tables import SentObject
from report_drafts.users import user_for_token
from tests.drafts.conftest import auth
from tests.drafts.helpers import job_keys, make_draft


def test_fhir_read_and_search(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    rad = auth(tokens["rad"])
    report_id, study = make_draft(engine, settings)
    other_id, _ = make_draft(engine, settings, patient_id="P0002", accession="ACC2")
    uid = client.get(f"/api/reports/{report_id}", headers=rad).json()["uid"]

    draft = DiagnosticReport.model_validate_json(
        client.get(f"/fhir/DiagnosticReport/{uid}", headers=rad).content
    )
    assert draft.status == "preliminary" and draft.id == uid
    assert client.get(f"/fhir/DiagnosticReport/{uid}").status_code == 401

    # Mid-review edits are not published; the signature is.
    client.post(
        f"/api/reports/{report_id}/edit",
        json={"expected_version": 1, "impression": "Changed."},
        headers=rad,
    )
    assert (
        DiagnosticReport.model_validate_json(
            client.get(f"/fhir/DiagnosticReport/{uid}", headers=rad).content
        ).status
        == "preliminary"
    )
    client.post(
        f"/api/reports/{report_id}/sign",
        json={"expected_version": 2, "edit_reason": "content"},
        headers=rad,
    )
    final = DiagnosticReport.model_validate_json(
        client.get(f"/fhir/DiagnosticReport/{uid}", headers=rad).content
    )
    assert final.status == "final" and final.conclusion.startswith("Changed.")

    def search(query: str) -> list[str]:
        response = client.get(f"/fhir/DiagnosticReport?{query}", headers=rad)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        bundle = Bundle.model_validate_json(response.content)
        return [str(e.resource.id) for e in bundle.entry or []]

    assert search("patient=P0001") == [uid]
    assert search("patient=Patient/P0002") != [uid] and len(search("patient=P0002")) == 1
    assert search(f"study=urn:oid:{study.study_instance_uid}") == [uid]
    assert search("status=final") == [uid]
    assert len(search("status=preliminary")) == 1
    assert len(search("date=2026-11-20")) == 2
    assert search("date=ge2026-11-21") == []

    imaging = ImagingStudy.model_validate_json(
        client.get(f"/fhir/ImagingStudy/{study.study_instance_uid}", headers=rad).content
    )
    assert imaging.numberOfInstances == 1
    assert imaging.series[0].instance[0].uid == study.sop_instance_uids[0]
    found = Bundle.model_validate_json(
        client.get("/fhir/ImagingStudy?patient=P0001", headers=rad).content
    )
    assert [e.resource.id for e in found.entry] == [study.study_instance_uid]

    authored = Provenance.model_validate_json(
        client.get(f"/fhir/Provenance/{uid}-v1", headers=rad).content
    )
    assert [a.type.coding[0].code for a in authored.agent] == ["author"]
    assert authored.agent[0].who.reference.startswith("Device/")
    verified = Provenance.model_validate_json(
        client.get(f"/fhir/Provenance/{uid}-v3", headers=rad).content
    )
    assert [a.type.coding[0].code for a in verified.agent] == ["author", "verifier"]
    assert client.get(f"/fhir/Provenance/{uid}-v2", headers=rad).status_code == 404

    capability = CapabilityStatement.model_validate_json(client.get("/fhir/metadata").content)
    assert {r.type for r in capability.rest[0].resource} >= {"DiagnosticReport", "ImagingStudy"}
    assert other_id != report_id


def test_fhir_read_of_a_rejected_draft_is_entered_in_error(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    """RadDraft's own FHIR read agrees with what it pushed: a withdrawn draft is withdrawn."""
    rad = auth(tokens["rad"])
    report_id, _study = make_draft(engine, settings)
    uid = client.get(f"/api/reports/{report_id}", headers=rad).json()["uid"]
    rejected = client.post(
        f"/api/reports/{report_id}/reject",
        json={"expected_version": 1, "reason": "wrong side"},
        headers=rad,
    )
    assert rejected.status_code == 200, rejected.text
    withdrawn = DiagnosticReport.model_validate_json(
        client.get(f"/fhir/DiagnosticReport/{uid}", headers=rad).content
    )
    assert withdrawn.status == "entered-in-error"
    assert "WITHDRAWN: AI draft rejected: wrong side" in withdrawn.conclusion
    response = client.get("/fhir/DiagnosticReport?status=preliminary", headers=rad)
    assert uid not in response.text


def test_fhir_push_objects_written_for_the_worker(
    engine: Engine, settings: Settings, tokens: dict[str, str]
) -> None:
    wired = settings.model_copy(
        update={"fhir_server_url": "http://fhir.example/fhir", "release_unsigned_fhir": "send"}
    )
    _report_id, _ = make_draft(engine, wired)
    with session_scope(engine) as session:
        rows = session.scalars(select(SentObject).where(SentObject.kind == "fhir")).all()
        kinds = sorted(r.identifier.split("/")[0] for r in rows)
        assert kinds == ["Device", "DiagnosticReport", "ImagingStudy", "Provenance"]
        for row in rows:
            data = json.loads((wired.data_dir / "outbox" / row.path).read_text())
            assert data["resourceType"] == row.identifier.split("/")[0]
        assert {j.task for j in session.scalars(select(jobs.Job))} == {"raddraft.push_fhir"}


def test_demo_drafts_are_held(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    from raddraft.settings import DicomNode

    wired = settings.model_copy(update={"destinations": [DicomNode("P", "127.0.0.1", 104)]})
    demo = Algorithm(name="tiny", version="0", program_version="0.1.0", demo=True)
    report_id, _ = make_draft(engine, wired, algorithm=demo)
    assert job_keys(engine) == set()
    with session_scope(engine) as session:
        states = {r.state for r in session.scalars(select(SentObject))}
        assert states == {"held"}
    detail = client.get(f"/api/reports/{report_id}", headers=auth(tokens["reader"])).json()
    assert detail["warnings"][0].startswith("demo model")
    assert detail["state"] == "drafted"  # a reader's view does not start a review


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_png_renderings(
    engine: Engine,
    settings: Settings,
    tokens: dict[str, str],
    client: TestClient,
    photometric: str,
) -> None:
    report_id, study = make_draft(engine, settings, photometric=photometric)
    url = f"/api/reports/{report_id}/images/{study.sop_instance_uids[0]}.png"
    with_boxes = client.get(url, headers=auth(tokens["reader"]))
    plain = client.get(url + "?boxes=false", headers=auth(tokens["reader"]))
    assert with_boxes.status_code == plain.status_code == 200
    assert with_boxes.headers["content-type"] == "image/png"
    boxed = np.asarray(Image.open(io.BytesIO(with_boxes.content)))
    bare = np.asarray(Image.open(io.BytesIO(plain.content)))
    assert bare.shape == (64, 48, 3)
    assert not np.array_equal(boxed, bare)
    # The box of the first finding (x 4..20, y 30..60) is drawn on its edge, in colour.
    assert tuple(boxed[45, 4]) == (255, 200, 0) and tuple(bare[45, 4]) != (255, 200, 0)
    # The test image is a left-to-right ramp: MONOCHROME1 shows it inverted.
    left, right = int(bare[5, 1, 0]), int(bare[5, 46, 0])
    assert (left < right) if photometric == "MONOCHROME2" else (left > right)
    small = client.get(url + "?max_size=32", headers=auth(tokens["reader"]))
    assert Image.open(io.BytesIO(small.content)).size == (24, 32)
    assert client.get(url).status_code == 401
    missing = f"/api/reports/{report_id}/images/1.2.3.png"
    assert client.get(missing, headers=auth(tokens["reader"])).status_code == 404


def test_worklist_order_filters_and_paging(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    routine_id, _ = make_draft(engine, settings, accession="R1")
    stat_id, _ = make_draft(engine, settings, accession="S1", priority=0, patient_id="P9")
    older_routine_id, _ = make_draft(engine, settings, accession="R0")
    reader = auth(tokens["reader"])
    items = client.get("/api/worklist", headers=reader).json()["items"]
    assert items[0]["id"] == stat_id  # the STAT study first, whatever its age
    assert {i["id"] for i in items[1:]} == {routine_id, older_routine_id}
    assert [
        i["id"] for i in client.get("/api/worklist?accession=R1", headers=reader).json()["items"]
    ] == [routine_id]
    assert [
        i["id"] for i in client.get("/api/worklist?patient_id=P9", headers=reader).json()["items"]
    ] == [stat_id]
    assert [
        i["id"] for i in client.get("/api/worklist?priority=0", headers=reader).json()["items"]
    ] == [stat_id]
    assert client.get("/api/worklist?state=signed", headers=reader).json()["total"] == 0
    assert client.get("/api/worklist?date_from=2026-11-21", headers=reader).json()["total"] == 0
    page = client.get("/api/worklist?page=2&page_size=2", headers=reader).json()
    assert page["total"] == 3 and len(page["items"]) == 1
    assert client.get("/healthz").json() == {"status": "ok", "demo": False}
    assert client.get("/readyz").json() == {"status": "ok"}
    assert "/api/reports/{report_id}/sign" in client.get("/openapi.json").json()["paths"]


def test_requeue_and_retry(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    from tests.drafts.conftest import archive_study

    study = archive_study(engine, settings)
    with session_scope(engine) as session:
        drafting.mark_state(session, study.study_version_pk, "queued")
        drafting.mark_state(session, study.study_version_pk, "drafting")
        drafting.mark_state(session, study.study_version_pk, "failed", reason="CUDA OOM")
        dead = jobs.enqueue(
            session, task="raddraft.export_dicom", key="export:x", args={}, queue="io"
        )
        dead.state = jobs.JobState.dead
        dead_id = dead.id
    url = f"/api/admin/study-versions/{study.study_version_pk}/requeue"
    assert client.post(url, headers=auth(tokens["rad"])).status_code == 403
    r = client.post(url, headers=auth(tokens["admin"]))
    assert r.status_code == 200, r.text
    assert r.json()["key"] == f"draft:version:{study.study_version_pk}"
    with session_scope(engine) as session:
        job = session.scalars(select(jobs.Job).where(jobs.Job.key == r.json()["key"])).one()
        assert job.task == "raddraft.draft_study" and job.state == "pending"
        report = version_reads.report_for_study_version(session, study.study_version_pk)
        assert report is not None and report.state == "queued"
    r = client.post(f"/api/admin/jobs/{dead_id}/retry", headers=auth(tokens["admin"]))
    assert r.json() == {"id": dead_id, "state": "pending"}
    dead_list = client.get("/api/admin/jobs?state=dead", headers=auth(tokens["admin"])).json()
    assert dead_list == []
    audit = client.get(
        f"/api/studies/{study.study_instance_uid}/audit", headers=auth(tokens["reader"])
    ).json()
    # queued is where a report starts; drafting and failed are changes, then the requeue.
    assert [e["action"] for e in audit] == ["state", "state", "requeue"]


def test_cli_users_add_and_trace(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    from raddraft.cli import main

    runner = CliRunner()
    result = runner.invoke(
        main,
        ["users", "add", "drjones", "--role", "radiologist", "--display-name", "Jones^Indiana"],
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    with session_scope(engine) as session:
        user = user_for_token(session, token)
        assert user is not None and user.role == "radiologist"
        assert user.token_hash != token  # stored hashed
    again = runner.invoke(main, ["users", "add", "drjones", "--role", "reader"])
    assert again.exit_code != 0

    report_id, _ = make_draft(engine, settings)
    r = client.post(
        f"/api/reports/{report_id}/sign",
        json={"expected_version": 1, "edit_reason": "none"},
        headers=auth(token),
    )
    sr_uid = r.json()["version"]["sr_sop_instance_uid"]
    traced = runner.invoke(main, ["trace", sr_uid])
    assert traced.exit_code == 0, traced.output
    assert "Jones^Indiana (drjones" in traced.output
    assert "StanfordAIMI/CheXOne revision rev-abc123" in traced.output
    assert "stage 8" in traced.output
    assert runner.invoke(main, ["trace", "1.2.3.4"]).exit_code != 0


def test_app_with_pages_still_refuses_unsigned_finals(
    engine: Engine, settings: Settings, tokens: dict[str, str]
) -> None:
    """The full web app (API, pages, metrics) keeps the API's refusals."""
    from web import create_web_app

    report_id, _ = make_draft(engine, settings)
    with TestClient(create_web_app(settings)) as app_client:
        url = f"/api/reports/{report_id}/sign"
        body = {"expected_version": 1, "edit_reason": "none"}
        assert app_client.post(url, json=body).status_code == 401
        assert app_client.post(url, json=body, headers=auth(tokens["admin"])).status_code == 403
        assert app_client.post(url, json=body, headers=auth(tokens["rad"])).status_code == 200


def test_force_complete_goes_through_the_listener(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    from tests.drafts.conftest import archive_study

    study = archive_study(engine, settings)  # its only version is already complete
    url = f"/api/studies/{study.study_instance_uid}/force-complete"
    assert client.post("/api/admin" + url[4:], headers=auth(tokens["rad"])).status_code == 403
    r = client.post("/api/admin" + url[4:], headers=auth(tokens["admin"]))
    assert r.status_code == 200, r.text
    assert r.json()["completed"] == []  # nothing open: nothing to complete
    missing = client.post("/api/admin/studies/1.2.3/force-complete", headers=auth(tokens["admin"]))
    assert missing.status_code == 404
    trail = client.get(
        f"/api/studies/{study.study_instance_uid}/audit", headers=auth(tokens["reader"])
    ).json()
    assert [e["action"] for e in trail] == ["force_complete"]

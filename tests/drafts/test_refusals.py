"""Every way to reach a final report without a radiologist is tried, and refused."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import Engine

from raddraft.db import session_scope
from raddraft.settings import DicomNode, Settings
from report_drafts import drafting, signoff
from report_drafts.states import (
    IllegalTransition,
    InvalidRequest,
    PermissionDenied,
    ReportState,
    check_transition,
)
from report_drafts.tables import ReportVersion, User
from tests.drafts.conftest import auth
from tests.drafts.helpers import job_keys, make_draft


@pytest.fixture
def wired(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"destinations": [DicomNode("PACS", "127.0.0.1", 11113)], "ris_mllp": "h:1"}
    )


def _finals(engine: Engine) -> int:
    with session_scope(engine) as session:
        return len(
            session.scalars(
                select(ReportVersion).where(ReportVersion.status != "preliminary")
            ).all()
        )


def test_no_final_without_a_radiologist(
    engine: Engine, wired: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    report_id, study = make_draft(engine, wired)
    client.app.state.settings = wired  # type: ignore[attr-defined]
    keys = job_keys(engine)
    sign = {"expected_version": 1, "edit_reason": "none"}
    url = f"/api/reports/{report_id}/sign"

    # Unauthenticated: no header, a wrong scheme, an unknown token.
    assert client.post(url, json=sign).status_code == 401
    assert (
        client.post(url, json=sign, headers={"Authorization": "Basic cmFkOnJhZA=="}).status_code
        == 401
    )
    assert client.post(url, json=sign, headers=auth("rdt_not-a-token")).status_code == 401
    assert client.get("/api/worklist").status_code == 401
    assert (
        client.get("/api/worklist", headers=auth("rdt_x")).headers.get("www-authenticate")
        == "Bearer"
    )

    # Wrong roles: a reader and an administrator can neither sign nor edit.
    for who in ("reader", "admin"):
        assert client.post(url, json=sign, headers=auth(tokens[who])).status_code == 403
        edit = client.post(
            f"/api/reports/{report_id}/edit",
            json={"expected_version": 1, "impression": "x"},
            headers=auth(tokens[who]),
        )
        assert edit.status_code == 403
    # ... nor through the lifecycle directly (defence in depth behind the routes).
    with session_scope(engine) as session:
        admin = session.scalars(select(User).where(User.name == "admin")).one()
        with pytest.raises(PermissionDenied):
            signoff.sign(
                session, report_id, admin, expected_version=1, edit_reason="none", settings=wired
            )
        # The worker's state setter cannot make anything final.
        with pytest.raises(InvalidRequest):
            drafting.mark_state(session, study.study_version_pk, "signed")

    # A direct state change: no route sets a state; extra fields are refused, not ignored.
    rad = auth(tokens["rad"])
    for method in ("put", "patch", "delete"):
        response = client.request(
            method.upper(), f"/api/reports/{report_id}", json={"state": "signed"}, headers=rad
        )
        assert response.status_code == 405
    smuggled = client.post(
        f"/api/reports/{report_id}/edit",
        json={"expected_version": 1, "impression": "x", "status": "final", "state": "signed"},
        headers=rad,
    )
    assert smuggled.status_code == 422
    bad_reason = client.post(
        url, json={"expected_version": 1, "edit_reason": "whatever"}, headers=rad
    )
    assert bad_reason.status_code == 422
    # An administrator's requeue cannot replace a draft either.
    requeue = client.post(
        f"/api/admin/study-versions/{study.study_version_pk}/requeue", headers=auth(tokens["admin"])
    )
    assert requeue.status_code == 409

    assert _finals(engine) == 0
    assert job_keys(engine) == keys  # nothing was enqueued for export

    # The real thing, then replays: one final only, one set of export jobs.
    assert client.post(url, json=sign, headers=rad).status_code == 200
    after_sign = job_keys(engine)
    for expected in (1, 2):
        replay = client.post(url, json={**sign, "expected_version": expected}, headers=rad)
        assert replay.status_code == 409
    other = client.post(url, json={**sign, "expected_version": 2}, headers=auth(tokens["rad2"]))
    assert other.status_code == 409
    assert _finals(engine) == 1
    assert job_keys(engine) == after_sign


def test_stale_edit_and_superseded_or_rejected_draft_cannot_be_signed(
    engine: Engine, settings: Settings, tokens: dict[str, str], client: TestClient
) -> None:
    rad = auth(tokens["rad"])
    old_id, study = make_draft(engine, settings)
    # An edit against an old version is refused (someone else changed it meanwhile).
    assert (
        client.post(
            f"/api/reports/{old_id}/edit",
            json={"expected_version": 1, "impression": "a"},
            headers=rad,
        ).status_code
        == 200
    )
    stale = client.post(
        f"/api/reports/{old_id}/edit", json={"expected_version": 1, "impression": "b"}, headers=rad
    )
    assert stale.status_code == 409
    assert "version 1" in stale.json()["detail"]

    # New images arrived: the later study version's draft supersedes this one.
    new_id, _ = make_draft(engine, settings, study_uid=study.study_instance_uid, version_number=2)
    detail = client.get(f"/api/reports/{old_id}", headers=rad).json()
    assert detail["state"] == "superseded" and detail["superseded_by"] == new_id
    refused = client.post(
        f"/api/reports/{old_id}/sign",
        json={"expected_version": detail["current_version"], "edit_reason": "none"},
        headers=rad,
    )
    assert refused.status_code == 409
    assert "superseded" in refused.json()["detail"]

    # A rejected draft cannot be signed afterwards.
    rejected = client.post(
        f"/api/reports/{new_id}/reject",
        json={"expected_version": 1, "reason": "wrong patient"},
        headers=rad,
    )
    assert rejected.status_code == 200
    assert rejected.json()["version"]["state"] == "rejected"
    again = client.post(
        f"/api/reports/{new_id}/sign",
        json={"expected_version": 2, "edit_reason": "none"},
        headers=rad,
    )
    assert again.status_code == 409
    assert _finals(engine) == 0
    # Nothing leads out of "superseded": not even a late draft for that study version.
    with pytest.raises(IllegalTransition):
        check_transition(ReportState.superseded, ReportState.drafted)

"""The review page of a draft whose model text had control bytes (SQLite and PostgreSQL): the
Findings box and the stage list show none, the page says the text was cleaned, and a stage
without a prior reads "Skipped: no prior study"."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts import drafting
from tests.drafts.conftest import ALGORITHM, RUN, archive_study, draft_content
from tests.pages.seed import Seeded
from tests.pages.test_web import sign_in


@pytest.fixture
def client(web_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(web_app) as test_client:
        yield test_client


def test_findings_box_and_stages_show_no_control_bytes(
    client: TestClient, seeded: Seeded, engine: Engine, pages_settings: Settings
) -> None:
    study = archive_study(engine, pages_settings, accession="ACC-CTRL", patient_id="P-CTRL")
    content = draft_content(study.sop_instance_uids[0])
    content = dataclasses.replace(content, findings_text="Small\x02 effusion\x1d.")
    stages = [dict(s) for s in RUN["stages"]]
    stages[1]["answer"] = "raw\x05 answer"
    stages[4] = {"stage": 5, "name": "comparison", "skipped": "no prior study"}
    with session_scope(engine) as session:
        row = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=content,
            run={**RUN, "stages": stages},
            algorithm=ALGORITHM,
            settings=pages_settings,
        )
        report_pk = row.report_pk
    sign_in(client, seeded.users["radiologist"].name)
    page = client.get(f"/reports/{report_pk}")
    assert page.status_code == 200
    html = page.text
    assert not any(ord(c) < 0x20 and c not in "\n\t\r" for c in html)
    assert ">Small effusion.</textarea>" in html
    assert "raw\u2405 answer" in html
    assert 'data-testid="sanitised-note">RadDraft removed 2 control characters' in html
    assert "Skipped: no prior study" in html
    assert "Skipped: skipped" not in html

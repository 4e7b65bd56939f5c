"""No silent loss: answers not understood land as "needs review" on their label (draft, page,
SR, HL7); findings the text names outside the labels are flagged; a radiologist adds a missed
finding with a box, and it is counted per label."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import Engine

import models
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts import drafting
from report_drafts.builders.hl7_oru_r01 import text_lines
from report_drafts.content import Finding, ReportContent
from report_drafts.reconcile import unlisted_findings
from report_drafts.tables import ReportVersion, Role, SentObject
from report_drafts.users import add_user
from tests.conftest import reload_settings
from tests.drafts.conftest import ALGORITHM, RUN, archive_study, auth, draft_content
from web import create_web_app
from worker import pipeline

PASSWORD = "correct horse battery staple"


def reading_with_gaps() -> models.Reading:
    """A reading where one presence answer and one grounding answer were not understood."""
    info = models.ModelInfo("tiny", None, demo=False, backend="transformers", source="x")
    grounding = models.Turn(
        kind="grounding",
        question="Locate ...",
        answer="somewhere",
        raw="somewhere",
        target="Edema",
        parsed=False,
        parse_note="no box and no negative answer",
    )
    return models.Reading(
        model=info,
        settings={},
        program_version="test",
        images=[],
        stages=[
            models.StageResult(stage=3, name="grounding", mode="instruction", turns=[grounding])
        ],
        findings=[
            models.Finding(label="Pneumothorax", present=None, presence_answer="Maybe."),
            models.Finding(label="Edema", present=True),
            models.Finding(label="Fracture", present=False),
        ],
        findings_text="Mild edema.",
        impression="Edema.",
    )


def test_answers_not_understood_become_needs_review_labels() -> None:
    content = pipeline.report_content(reading_with_gaps(), study_version_uid="1.2.3.v1")
    assert content.needs_review == ("Pneumothorax", "Edema")
    assert [f.label for f in content.findings] == ["Edema"]
    notes = dataclasses.replace(content).review_notes()
    assert any("Pneumothorax, Edema" in n for n in notes)


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("Small left pleural effusion.", ["Pleural Effusion"], []),
        ("Small left pleural effusion.", [], ["pleural effusion (Pleural Effusion)"]),
        ("No pneumothorax. Hiatal hernia.", [], ["hiatal hernia"]),
        ("Right lower lobe pneumonia, no effusion.", ["Pneumonia"], []),
        ("No consolidation, effusion or pneumothorax.", [], []),
        ("Free air under the diaphragm; no nodule.", [], ["free air"]),
    ],
)
def test_reconciling_the_findings_text_with_the_labels(
    text: str, labels: list[str], expected: list[str]
) -> None:
    findings = tuple(Finding(tracking_uid=f"1.2.{n}", label=x) for n, x in enumerate(labels))
    content = ReportContent(findings_text=text, impression="", findings=findings)
    assert unlisted_findings(content) == expected


def gap_content(sop_uid: str) -> ReportContent:
    content = draft_content(sop_uid)
    return dataclasses.replace(
        content,
        findings_text=content.findings_text + " Hiatal hernia. Right lower lobe pneumonia.",
        extra={"needs_review": ["Pneumothorax"]},
    )


def test_the_draft_the_sr_and_the_hl7_say_what_needs_review(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADDRAFT_RIS_MLLP", "127.0.0.1:9")
    monkeypatch.setenv("RADDRAFT_DESTINATIONS", "PACS@127.0.0.1:1")
    settings = reload_settings()
    study = archive_study(engine, settings)
    with session_scope(engine) as session:
        row = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=gap_content(study.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=settings,
        )
        extra = row.content["extra"]
        sr_uid = row.sr_sop_instance_uid
        hl7 = session.scalar(select(SentObject).where(SentObject.kind == "hl7"))
        assert hl7 is not None
        hl7_text = (settings.data_dir / "outbox" / hl7.path).read_bytes().decode()
    assert extra["needs_review"] == ["Pneumothorax"]
    assert extra["unlisted_findings"] == ["hiatal hernia", "pneumonia (Pneumonia)"]
    sr = pydicom.dcmread(settings.data_dir / "outbox" / f"{sr_uid}.dcm")
    comments = [
        str(item.TextValue)
        for item in _walk(sr)
        if "TextValue" in item and item.ConceptNameCodeSequence[0].CodeMeaning == "Comment"
    ]
    assert any("could not be read for Pneumothorax" in c for c in comments)
    assert any("hiatal hernia" in c for c in comments)
    lines = text_lines(hl7_text)
    assert "REVIEW:" in lines
    assert any("could not be read for Pneumothorax" in line for line in lines)


def _walk(ds: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _walk(item)


def test_a_radiologist_adds_a_missed_finding_with_a_box(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADDRAFT_WEB_SECRET", "test-secret-not-for-production")
    settings = reload_settings()
    study = archive_study(engine, settings)
    with session_scope(engine) as session:
        row = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=gap_content(study.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=settings,
        )
        report_id = row.report_pk
        _u, rad = add_user(
            session, "rad", Role.radiologist, display_name="House^G", password=PASSWORD
        )
        _u, reader = add_user(session, "reader", Role.reader, display_name="Reader^R")
    sop = study.sop_instance_uids[0]
    body = {
        "expected_version": 1,
        "label": "Pneumothorax",
        "sop_instance_uid": sop,
        "box": {"x0": 2, "y0": 3, "x1": 20, "y1": 30},
        "laterality": "right",
    }
    with TestClient(create_web_app(settings)) as client:
        # The review page says what needs review and offers the drawing tools.
        page = _review_page(client, report_id)
        assert 'data-testid="needs-review-banner"' in page and "Pneumothorax" in page
        assert 'data-testid="unlisted-banner"' in page and "hiatal hernia" in page
        assert 'id="add-finding-form"' in page and 'id="draw-box"' in page

        assert (
            client.post(
                f"/api/reports/{report_id}/findings", json=body, headers=auth(reader)
            ).status_code
            == 403
        )
        wrong = {**body, "sop_instance_uid": "1.2.3.999"}
        refused = client.post(f"/api/reports/{report_id}/findings", json=wrong, headers=auth(rad))
        assert refused.status_code == 422 and "not part of this report" in refused.text
        added = client.post(f"/api/reports/{report_id}/findings", json=body, headers=auth(rad))
        assert added.status_code == 200, added.text
        again = client.post(f"/api/reports/{report_id}/findings", json=body, headers=auth(rad))
        assert again.status_code == 409  # stale version: a replay adds nothing
        signed = client.post(
            f"/api/reports/{report_id}/sign",
            json={"expected_version": 2, "edit_reason": "content"},
            headers=auth(rad),
        )
        assert signed.status_code == 200, signed.text
        figures = client.get("/api/figures", headers=auth(rad)).json()
    with session_scope(engine) as session:
        current = session.scalars(
            select(ReportVersion)
            .where(ReportVersion.report_pk == report_id)
            .order_by(ReportVersion.number)
        ).all()[-2]
        assert current.action == "finding_add"
        found = [f for f in current.content["findings"] if f["label"] == "Pneumothorax"]
    assert len(found) == 1
    assert found[0]["box"] == {"x0": 2, "y0": 3, "x1": 20, "y1": 30}
    assert found[0]["sop_instance_uid"] == sop and found[0]["added_by"] == "rad"
    # The label the radiologist decided no longer waits for review.
    assert current.content["extra"]["needs_review"] == []
    assert figures["feedback"]["add"] == 1
    # Signed with an added finding is not "signed with no edit".
    assert figures["signed"] == 1 and figures["signed_without_edit"] == 0
    assert figures["feedback_by_label"]["Pneumothorax"]["add"] == 1


def _review_page(client: TestClient, report_id: int) -> str:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    signed_in = client.post(
        "/login",
        data={"csrf_token": token.group(1), "username": "rad", "password": PASSWORD},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303
    page = client.get(f"/reports/{report_id}")
    assert page.status_code == 200
    client.cookies.clear()
    return page.text


def test_the_pages_vocabulary_is_the_models() -> None:
    """report_drafts may not import models, so the review page keeps its own copy of the labels
    the model is asked about (for adding a missed finding): it must stay the same list."""
    from models._prompts import DEFAULT_FINDINGS
    from web.pages.viewmodel import FINDING_LABELS

    assert FINDING_LABELS == DEFAULT_FINDINGS

"""The pages in headless Chromium against the app on loopback (PostgreSQL).

A radiologist signs in, opens the urgent draft, hides a box, rejects a finding, edits the
impression and signs; a reader sees no sign button and the server refuses a forged request; an
administrator requeues a dead-lettered export. Screenshots go to ``test-artifacts/pages/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dicom_listener.tables import Study, StudyVersion
from raddraft import jobs
from report_drafts.content import ReportContent
from report_drafts.tables import Report, ReportVersion
from tests.pages.conftest import shot
from tests.pages.seed import PASSWORD, Seeded

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def sign_in(page: Page, *, username: str = "", token: str = "", goto: str = "/worklist") -> None:
    page.goto(goto)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    if token:
        page.get_by_label("API token").fill(token)
    else:
        page.get_by_label("User name").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


A11Y_PROBLEMS = (Path(__file__).parent / "a11y.js").read_text()


def assert_accessible(page: Page) -> None:
    """Every control labelled, every button/link named, images with alt, one h1, unique ids;
    the first Tab reaches the skip link."""
    assert page.evaluate(A11Y_PROBLEMS) == []
    page.locator("body").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"


def finding_item(page: Page, uid: str) -> Any:
    return page.locator(f'li.finding[data-uid="{uid}"]')


def test_radiologist_reviews_and_signs(
    new_page: Callable[[], Page], seeded: Seeded, engine: Engine
) -> None:
    page = new_page()
    shot_login = page.goto("/login")
    assert shot_login is not None
    shot(page, "01-login")
    sign_in(page, username="curie")
    expect(page).to_have_url(re.compile(r"/worklist$"))

    # Worklist: STAT first, its urgent finding flagged, the demo draft marked.
    rows = page.locator("table.worklist tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.first).to_contain_text("ACC-1001")
    expect(rows.first).to_contain_text("STAT")
    expect(rows.first.locator(".flag-urgent")).to_contain_text("Pneumothorax")
    expect(page.locator('tr:has-text("ACC-1003") .badge-demo')).to_be_visible()
    assert_accessible(page)
    shot(page, "02-worklist")

    # Filters keep to the query string.
    page.get_by_label("Accession").fill("ACC-1002")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    page.get_by_role("link", name="Clear").click()

    page.get_by_role("link", name="DOE, JANE").click()
    expect(page).to_have_url(re.compile(rf"/reports/{seeded.urgent_report}$"))
    expect(page.get_by_test_id("draft-banner")).to_contain_text("Unverified AI draft")
    expect(page.get_by_test_id("demo-banner")).to_have_count(0)
    expect(page.locator("#state-badge")).to_have_text("In review")  # opening starts review
    # Three boxes, drawn over the image in its stored-pixel grid.
    overlay = page.locator(".frame:not([hidden]) svg.overlay")
    expect(overlay.locator("g.box")).to_have_count(3)
    assert overlay.get_attribute("viewBox") == "0 0 448 512"
    # The overlay sits on the image's stored pixels, whatever the displayed size.
    page.wait_for_function("() => document.querySelector('.frame:not([hidden]) img').complete")
    image = page.locator(".frame:not([hidden]) img").bounding_box()
    rect = overlay.locator(f'g[data-finding="{seeded.pneumothorax_uid}"] rect').bounding_box()
    assert image is not None and rect is not None
    scale = image["width"] / 448
    assert abs(image["height"] / 512 - scale) < 0.01
    for got, want in (
        (rect["x"] - image["x"], 250.0),
        (rect["y"] - image["y"], 40.0),
        (rect["width"], 150.0),
        (rect["height"], 130.0),
    ):
        assert abs(got - want * scale) <= 3, (got, want * scale)
    # The eight stages are there, collapsed.
    expect(page.locator("details.stage-details")).to_have_count(8)
    assert page.locator("details.stage-details[open]").count() == 0
    expect(page.locator(".prior img")).to_be_visible()
    assert_accessible(page)
    shot(page, "03-review")

    # Window/level re-renders the API's PNG with the window asked for; zoom enlarges the frame.
    current = page.locator(".frame:not([hidden]) img")
    page.locator("#wl-width").fill("1000")
    expect(current).to_have_attribute("src", re.compile(r"window_width=1000"))
    width_before = current.bounding_box()["width"]  # type: ignore[index]
    page.locator("#zoom-in").click()
    expect(page.locator("#zoom-level")).to_have_text("150%")
    assert current.bounding_box()["width"] > width_before * 1.4  # type: ignore[index]
    page.locator("#zoom-fit").click()
    page.locator("#wl-reset").click()
    expect(current).not_to_have_attribute("src", re.compile(r"window_width"))

    # Toggle the pneumothorax box off and on.
    box = overlay.locator(f'g[data-finding="{seeded.pneumothorax_uid}"]')
    expect(box).to_be_visible()
    finding_item(page, seeded.pneumothorax_uid).get_by_label("Show box").uncheck()
    expect(box).to_be_hidden()
    finding_item(page, seeded.pneumothorax_uid).get_by_label("Show box").check()
    expect(box).to_be_visible()

    # Reject the effusion.
    effusion = finding_item(page, seeded.effusion_uid)
    effusion.get_by_role("button", name="Reject").click()
    expect(effusion.locator(".decision-tag")).to_have_text("Rejected")
    expect(overlay.locator(f'g.rejected[data-finding="{seeded.effusion_uid}"]')).to_have_count(1)
    expect(page.locator("#version-label")).to_have_text("version 2")

    # Edit a finding's label.
    devices = page.locator("li.finding").nth(2)
    devices.get_by_text("Edit", exact=True).click()
    devices.get_by_label("Label").fill("Central venous catheter")
    devices.get_by_role("button", name="Save finding").click()
    expect(devices.locator(".label")).to_have_text("Central venous catheter")
    expect(page.locator("#version-label")).to_have_text("version 3")

    # Keyboard: ? opens the help, j selects the first finding, a accepts it.
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("?")
    expect(page.locator("#help-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#help-dialog")).to_be_hidden()
    page.keyboard.press("j")
    page.keyboard.press("a")
    expect(page.locator("#version-label")).to_have_text("version 4")

    # Edit the impression; sign with the reason "content" (saves the text first).
    impression = "1. New right apical pneumothorax. Clinician informed."
    page.get_by_label("Impression").fill(impression)
    page.get_by_label("Content", exact=True).check()
    shot(page, "04-review-edited")
    page.get_by_role("button", name=re.compile("^Sign as")).click()

    # After signing: the final version and what was sent where.
    expect(page.locator("#state-badge")).to_have_text("Signed")
    expect(page.get_by_test_id("draft-banner")).to_have_count(0)
    signed = page.locator("#signed-box")
    expect(signed).to_contain_text("Curie, Marie")
    expect(signed).to_contain_text("content")
    expect(page.locator("#final-impression")).to_have_text(impression)
    sent = page.locator("#sent-table tbody tr")
    expect(sent).to_have_count(2)  # the final SR and one GSPS
    expect(page.locator("#sent-table")).to_contain_text("PACS@127.0.0.1:1")
    expect(page.get_by_role("button", name=re.compile("^Sign as"))).to_have_count(0)
    shot(page, "05-signed")
    page.locator("#sent-table").scroll_into_view_if_needed()
    shot(page, "05b-signed-sent")

    with Session(engine) as session:
        report = session.get(Report, seeded.urgent_report)
        assert report is not None and report.state == "signed"
        final = session.scalar(
            select(ReportVersion).where(
                ReportVersion.report_pk == report.id, ReportVersion.action == "sign"
            )
        )
        assert final is not None and final.actor == "curie" and final.edit_reason == "content"
        content = ReportContent.from_json(final.content)
        assert content.impression == impression
        by_uid = {f.tracking_uid: f for f in content.findings}
        assert by_uid[seeded.effusion_uid].accepted is False
        assert by_uid[seeded.pneumothorax_uid].accepted is True
        assert "Central venous catheter" in {f.label for f in content.findings}


def test_reader_sees_no_sign_buttons_and_the_server_refuses(
    new_page: Callable[[], Page], seeded: Seeded, engine: Engine
) -> None:
    page = new_page()
    sign_in(page, token=seeded.users["reader"].token, goto=f"/reports/{seeded.demo_report}")
    expect(page).to_have_url(re.compile(rf"/reports/{seeded.demo_report}$"))
    expect(page.get_by_test_id("demo-banner")).to_contain_text(
        "demo model, random weights, not a clinical draft"
    )
    expect(page.get_by_test_id("draft-banner")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Sign as"))).to_have_count(0)
    expect(page.get_by_role("button", name="Reject")).to_have_count(0)
    expect(page.get_by_role("button", name="Accept")).to_have_count(0)
    expect(page.locator("#readonly-note")).to_contain_text("role (reader)")
    assert_accessible(page)
    # The reader can still look: boxes toggle.
    expect(page.locator("svg.overlay g.box")).to_have_count(1)
    shot(page, "06-reader-demo-draft")

    # A forged sign request with the reader's own session and a valid CSRF token: 403.
    status = page.evaluate(
        """async (id) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch(`/api/reports/${id}/sign`, {method: 'POST',
              headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
              body: JSON.stringify({expected_version: 1, edit_reason: 'none'})});
            return r.status;
        }""",
        seeded.demo_report,
    )
    assert status == 403
    # Without the CSRF header the cookie does not authenticate a change at all: 401.
    status = page.evaluate(
        """async (id) => (await fetch(`/api/reports/${id}/reject`, {method: 'POST',
              headers: {'Content-Type': 'application/json'},
              body: JSON.stringify({expected_version: 1, reason: 'forged'})})).status""",
        seeded.demo_report,
    )
    assert status == 401
    # The queue page is for administrators.
    response = page.goto("/queue")
    assert response is not None and response.status == 403
    with Session(engine) as session:
        report = session.get(Report, seeded.demo_report)
        assert report is not None and report.state == "drafted" and report.current_version == 1


def test_admin_requeues_a_dead_export(
    new_page: Callable[[], Page], seeded: Seeded, engine: Engine
) -> None:
    page = new_page()
    sign_in(page, username="admin", goto="/queue")
    expect(page).to_have_url(re.compile(r"/queue$"))
    dead = page.locator("#q-dead tbody tr")
    expect(dead).to_have_count(1)
    expect(dead.first).to_contain_text("association rejected")
    expect(page.locator("#q-workers")).to_contain_text("StanfordAIMI/CheXOne")
    expect(page.locator("#q-failed")).to_contain_text("CUDA out of memory")
    expect(page.locator("#q-open")).to_contain_text("ACC-1005")
    expect(page.locator("#q-latency")).to_contain_text("run_s")
    expect(page.locator("#q-disk")).to_contain_text("% used")
    expect(page.locator("#q-oldest")).to_contain_text("ACC-1001")
    assert_accessible(page)
    shot(page, "07-queue")

    dead.first.get_by_role("button", name=re.compile("^Requeue")).click()
    expect(page.locator("#q-dead")).to_contain_text("No failed jobs.")
    with Session(engine) as session:
        job = session.get(jobs.Job, seeded.dead_export_job)
        assert job is not None and job.state == jobs.JobState.pending and job.attempts == 0

    # Requeue the failed draft; force the study still receiving images to complete.
    page.locator("#q-failed").get_by_role("button", name=re.compile("^Requeue")).click()
    expect(page.locator("#q-failed")).to_contain_text("No failed drafts.")
    page.locator("#q-open").get_by_role("button", name=re.compile("^Force completion")).click()
    expect(page.locator("#q-open")).to_contain_text("No study is waiting for more images.")
    with Session(engine) as session:
        failed = session.get(Report, seeded.failed_report)
        assert failed is not None and failed.state == "queued"
        versions = session.scalars(
            select(StudyVersion.state)
            .join(Study, Study.id == StudyVersion.study_pk)
            .where(Study.accession_number == "ACC-1005")
        ).all()
        assert versions == ["complete"]

    # The page refreshes itself: a new worker's heartbeat appears without a reload.
    with Session(engine) as session:
        jobs.beat(session, "gpu-worker@node2", queues="gpu", model="StanfordAIMI/CheXOne")
    expect(page.locator("#q-workers")).to_contain_text("gpu-worker@node2", timeout=12_000)
    shot(page, "08-queue-after-requeue", full_page=True)

"""The review desk on a draft that a real gpu worker made with the tiny checkpoint.

The whole stack runs as processes (listener, router, workers, web) on PostgreSQL and Redis;
DCMTK storescu pushes the study; a radiologist signs in in Chromium, finds the draft on the
worklist, sees that it is a demo draft, edits the impression and signs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, expect

from raddraft import migrate
from tests.conftest import REDIS_URL, free_port
from tests.dicom_factory import make_study
from tests.pages.conftest import VIEWPORT, shot
from tests.stack import PARTS, Stack

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"


@pytest.fixture
def worker_stack(
    postgres_url: str, tiny_checkpoint: Path, tmp_path: Path
) -> Iterator[tuple[Stack, str, int]]:
    """A running stack with one study drafted by the gpu worker; yields its study UID."""
    migrate.upgrade(postgres_url)
    broker = REDIS_URL.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(broker).flushdb()
    web_port = free_port()
    env = {
        "RADDRAFT_DATABASE_URL": postgres_url,
        "RADDRAFT_BROKER_URL": broker,
        "RADDRAFT_DATA_DIR": str(tmp_path / "data"),
        "RADDRAFT_MODEL": str(tiny_checkpoint),
        "RADDRAFT_WEB_HOST": "127.0.0.1",
        "RADDRAFT_WEB_PORT": str(web_port),
        "RADDRAFT_WEB_SECRET": "test-secret-not-for-production",
    }
    stack = Stack(tmp_path / "logs", env, parts={**PARTS, "web": ["web"]})
    subprocess.run(
        [
            sys.executable,
            "-m",
            "raddraft",
            "users",
            "add",
            "mcurie",
            "--role",
            "radiologist",
            "--display-name",
            "Curie^Marie",
            "--password-stdin",
        ],
        input=f"{PASSWORD}\n",
        env=stack.env,
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )
    ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=400, cols=360)
    stack.start()
    try:
        stack.push(files)
        stack.wait_for_draft(ids.study_uid)
        stack.wait_for_trace(ids.study_uid)  # the page below shows every stage
        yield stack, ids.study_uid, web_port
    finally:
        stack.stop()


def test_radiologist_signs_a_draft_the_worker_made(
    browser: Browser, worker_stack: tuple[Stack, str, int]
) -> None:
    stack, study_uid, web_port = worker_stack
    context = browser.new_context(viewport=VIEWPORT, base_url=f"http://127.0.0.1:{web_port}")
    context.set_default_timeout(20_000)
    page: Page = context.new_page()
    try:
        page.goto("/worklist")
        page.get_by_label("User name").fill("mcurie")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(re.compile(r"/worklist$"))
        page.locator("table a[href^='/reports/']").first.click()
        expect(page.get_by_test_id("demo-banner")).to_contain_text(
            "demo model, random weights, not a clinical draft"
        )
        # The eight CXRTrek stages, then the single-turn report prompts that fed the report
        # (RADDRAFT_REPORT_SOURCE=single_turn, the default).
        stages = page.locator("details.stage-details summary")
        expect(stages).to_have_count(9)
        for number in range(1, 9):
            expect(stages.nth(number - 1)).to_contain_text(f"Stage {number}:")
        expect(stages.nth(8)).to_contain_text("Report texts")
        # The worker-archived image renders: wait until the browser has decoded it.
        page.wait_for_function(
            "() => [...document.querySelectorAll('img[alt^=\"Current study\"]')]"
            ".some(i => i.complete && i.naturalWidth > 0)"
        )
        shot(page, "09-real-worker-draft")
        page.get_by_label("Impression").fill("No acute cardiopulmonary abnormality.")
        page.get_by_label("Content", exact=True).check()
        page.get_by_role("button", name=re.compile("^Sign as")).click()
        # Signing builds the final SR and GSPS from the archived images: on a loaded machine
        # that outlasts expect's 5 s default, so the wait is bounded at a minute instead.
        expect(page.locator("#state-badge")).to_have_text("Signed", timeout=60_000)
        expect(page.locator("#final-impression")).to_have_text(
            "No acute cardiopulmonary abnormality."
        )
        shot(page, "10-real-worker-signed")
    finally:
        context.close()
    report = stack.report(study_uid)
    assert report is not None and report.state == "signed" and report.current_version >= 2

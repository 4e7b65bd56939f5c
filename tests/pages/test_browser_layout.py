"""The review desk's layout in headless Chromium at two common screen sizes (issue 22).

No panel covers content: the sign-off stays in reach without covering the report as the side
panel scrolls, and an error toast is not hidden under (nor laid over) the side panel. Both the
current and the prior image fill their panes. A signed report's waiting time stops at its
sign-off. ``/docs`` can authorise with a token and leads back to the desk. Screenshots go to
``test-artifacts/pages/``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dicom_listener.tables import StudyVersion
from raddraft.db import utcnow
from report_drafts.tables import Report
from tests.pages.conftest import LiveServer, shot
from tests.pages.seed import Seeded
from web.pages import routes

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

SIZES = [(1400, 900), (1920, 1080)]
Box = dict[str, float]


@pytest.fixture(params=SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def sized_page(
    request: pytest.FixtureRequest, browser: Browser, live_server: LiveServer
) -> Iterator[Page]:
    width, height = request.param
    context = browser.new_context(
        viewport={"width": width, "height": height}, base_url=live_server.url
    )
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def _sign_in(page: Page, token: str, goto: str) -> None:
    page.goto(goto)
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(re.escape(goto) + "$"))


def _box(page: Page, selector: str) -> Box:
    found = page.locator(selector).bounding_box()
    assert found is not None, selector
    return found


def _overlap(a: Box, b: Box) -> float:
    """The area two boxes share."""
    width = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    height = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    return max(width, 0) * max(height, 0)


def _fills(image: Box, pane: Box, what: str) -> None:
    """The image fills its pane as far as its shape allows: inside it, touching both sides on
    one axis, and centred on the other (not left in the top half)."""
    tolerance = 3.0
    left, right = image["x"] - pane["x"], pane["x"] + pane["width"] - image["x"] - image["width"]
    top, bottom = image["y"] - pane["y"], pane["y"] + pane["height"] - image["y"] - image["height"]
    assert min(left, right, top, bottom) >= -tolerance, (what, image, pane)
    wide = left + right <= 2 * tolerance
    tall = top + bottom <= 2 * tolerance
    assert wide or tall, (what, "touches no two sides", image, pane)
    assert abs(left - right) <= tolerance and abs(top - bottom) <= tolerance, (what, image, pane)


# The element that scrolls the side panel's cards, whichever it is.
SCROLLER = """(() => {
  let el = document.getElementById('findings-h');
  while (el && !(el.scrollHeight > el.clientHeight
                 && ['auto', 'scroll'].includes(getComputedStyle(el).overflowY))) {
    el = el.parentElement;
  }
  return el;
})()"""


def _visible_cards(page: Page) -> list[Box]:
    """The part of each side-panel card (not the sign-off) that shows in its scrolling box."""
    boxes: list[Box] = page.evaluate(
        """() => {
          const side = """
        + SCROLLER
        + """.getBoundingClientRect();
          return [...document.querySelectorAll('.side .card:not(.decision)')].map((el) => {
            const r = el.getBoundingClientRect();
            const top = Math.max(r.top, side.top), bottom = Math.min(r.bottom, side.bottom);
            return {x: r.left, y: top, width: r.width, height: Math.max(bottom - top, 0)};
          }).filter((b) => b.height > 0);
        }"""
    )
    return boxes


def test_review_panels_cover_nothing_and_images_fill_their_panes(
    sized_page: Page, seeded: Seeded
) -> None:
    page = sized_page
    size = f"{page.viewport_size['width']}x{page.viewport_size['height']}"  # type: ignore[index]
    _sign_in(page, seeded.users["radiologist"].token, f"/reports/{seeded.urgent_report}")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.stage img')].every((i) => i.complete)"
    )
    page.wait_for_function(
        "() => document.querySelector('.frame:not([hidden])').style.width"
        " && document.querySelector('.prior-stage img').style.width"
    )
    window: Box = {"x": 0, "y": 0, **page.viewport_size}  # type: ignore[dict-item]

    _fills(_box(page, ".frame:not([hidden]) img"), _box(page, "#stage"), "current image")
    _fills(_box(page, ".prior-stage img"), _box(page, ".prior-stage"), "prior image")

    # The sign-off is always in the window and never over a card, wherever the side panel is.
    height = page.evaluate(f"{SCROLLER}.scrollHeight - {SCROLLER}.clientHeight")
    assert height > 0, "the side panel has more than fits: scrolling is what is tested"
    for top in (0, height // 3, 2 * height // 3, height):
        page.evaluate(f"(top) => {{ {SCROLLER}.scrollTop = top; }}", top)
        signoff = _box(page, "#signoff")
        assert _overlap(signoff, window) == pytest.approx(signoff["width"] * signoff["height"])
        for card in _visible_cards(page):
            assert _overlap(signoff, card) == 0, (top, card, signoff)
    shot(page, f"layout-{size}-review-scrolled")

    # A sign-off error: the toast shows over nothing of the side panel, and nothing covers it.
    page.evaluate(f"{SCROLLER}.scrollTop = 0")
    page.get_by_role("button", name=re.compile("^Sign as")).click()
    toast = page.locator("#toast.show")
    expect(toast).to_contain_text("Choose what you changed")
    expect(page.locator("#action-error")).to_contain_text("Choose what you changed")
    box = _box(page, "#toast.show")
    assert _overlap(box, _box(page, ".side")) == 0
    assert _overlap(box, window) == pytest.approx(box["width"] * box["height"])
    on_top = page.evaluate(
        """([x, y]) => {
          const toast = document.getElementById('toast');
          toast.style.pointerEvents = 'auto';  // elementFromPoint skips what takes no clicks
          const top = document.elementFromPoint(x, y);
          toast.style.pointerEvents = '';
          return toast.contains(top);
        }""",
        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
    )
    assert on_top, "the toast is covered"
    shot(page, f"layout-{size}-review-toast")


def _row_waiting(page: Page, report: int) -> str:
    return page.locator(f'tr[data-report="{report}"] td').last.inner_text().strip()


def test_waiting_stops_at_sign_off(
    sized_page: Page,
    seeded: Seeded,
    engine: Engine,
    web_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    page = sized_page
    size = f"{page.viewport_size['width']}x{page.viewport_size['height']}"  # type: ignore[index]
    report = seeded.routine_report
    with Session(engine) as session:
        row = session.get(Report, report)
        assert row is not None
        version = session.get(StudyVersion, row.study_version_pk)
        assert version is not None
        version.completed_at = utcnow() - dt.timedelta(hours=5)
        session.commit()
    token = seeded.users["radiologist"].token
    with TestClient(web_app) as client:
        bearer = {"Authorization": f"Bearer {token}"}
        client.get(f"/api/reports/{report}", headers=bearer)
        current = client.get(f"/api/reports/{report}", headers=bearer).json()["current_version"]
        signed = client.post(
            f"/api/reports/{report}/sign",
            json={"expected_version": current, "edit_reason": "none"},
            headers=bearer,
        )
        assert signed.status_code == 200, signed.text
    _sign_in(page, token, "/worklist")
    signed_label = _row_waiting(page, report)
    unsigned_label = _row_waiting(page, seeded.demo_report)
    assert signed_label.startswith("signed after 5 h"), signed_label

    # Two days later the signed report's time is the same; an unsigned one's has grown.
    later = utcnow() + dt.timedelta(days=2)
    monkeypatch.setattr(routes, "utcnow", lambda: later)
    page.reload()
    assert _row_waiting(page, report) == signed_label
    assert _row_waiting(page, seeded.demo_report) != unsigned_label
    shot(page, f"layout-{size}-worklist")
    with Session(engine) as session:
        assert session.scalar(select(Report.state).where(Report.id == report)) == "signed"


def test_docs_authorise_with_a_token_and_lead_back(sized_page: Page, seeded: Seeded) -> None:
    page = sized_page
    size = f"{page.viewport_size['width']}x{page.viewport_size['height']}"  # type: ignore[index]
    schema = page.request.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert {"token": []} in schema["paths"]["/api/worklist"]["get"]["security"]
    page.goto("/docs")
    page.get_by_role("button", name=re.compile("Authorize")).first.click()
    dialog = page.locator(".dialog-ux")
    dialog.locator("input").first.fill(seeded.users["reader"].token)
    dialog.locator("button.modal-btn.authorize").click()
    dialog.locator("button.modal-btn.btn-done").click()
    operation = page.locator("#operations-auth-me_api_me_get")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    expect(status).to_have_text("200")
    expect(operation.locator(".live-responses-table")).to_contain_text('"role": "reader"')
    shot(page, f"layout-{size}-docs")
    page.get_by_role("link", name="Back to the desk").click()
    expect(page).to_have_url(re.compile(r"/(login\?next=.*|worklist)$"))

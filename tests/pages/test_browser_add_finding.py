"""In headless Chromium (PostgreSQL): a radiologist draws a box over the image for a finding the
model missed, adds it, and the page shows it after the server stored it as a new version."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from report_drafts.tables import FindingFeedback, ReportVersion
from tests.pages.conftest import shot
from tests.pages.seed import Seeded
from tests.pages.test_browser import assert_accessible, sign_in

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def test_a_missed_finding_is_drawn_and_added(
    new_page: Callable[[], Page], seeded: Seeded, engine: Engine
) -> None:
    page = new_page()
    report = seeded.routine_report
    sign_in(page, username="curie", goto=f"/reports/{report}")
    expect(page).to_have_url(re.compile(rf"/reports/{report}$"))
    assert_accessible(page)

    page.get_by_role("button", name="Draw box").click()
    expect(page.get_by_role("button", name="Draw box")).to_have_attribute("aria-pressed", "true")
    image = page.locator(".frame:not([hidden]) img")
    area = image.bounding_box()
    assert area is not None
    # Drag from a quarter to a half of the image, in screen pixels.
    page.mouse.move(area["x"] + area["width"] * 0.25, area["y"] + area["height"] * 0.25)
    page.mouse.down()
    page.mouse.move(area["x"] + area["width"] * 0.4, area["y"] + area["height"] * 0.4, steps=4)
    page.mouse.move(area["x"] + area["width"] * 0.5, area["y"] + area["height"] * 0.5, steps=4)
    page.mouse.up()
    expect(page.locator("rect.drawn")).to_have_count(1)
    x0 = float(page.locator("#add-x0").input_value())
    x1 = float(page.locator("#add-x1").input_value())
    assert 0 < x0 < x1
    page.get_by_label("Label").last.fill("Pneumothorax")
    page.get_by_label("Side").select_option("right")
    shot(page, "add-finding-drawn")
    page.get_by_role("button", name="Add finding").click()
    expect(page.locator("#finding-list")).to_contain_text("Pneumothorax")
    shot(page, "add-finding-added")

    with Session(engine) as session:
        latest = session.scalars(
            select(ReportVersion)
            .where(ReportVersion.report_pk == report)
            .order_by(ReportVersion.number.desc())
        ).first()
        assert latest is not None and latest.action == "finding_add"
        added = [f for f in latest.content["findings"] if f.get("added_by") == "curie"]
        feedback = session.scalars(
            select(FindingFeedback).where(FindingFeedback.report_pk == report)
        ).all()
    assert len(added) == 1 and added[0]["laterality"] == "right"
    box = added[0]["box"]
    # A quarter to a half of the stored image, whatever the screen size was.
    columns = page.locator(".frame:not([hidden]) img").get_attribute("width")
    assert columns is not None
    assert box["x0"] == pytest.approx(int(columns) * 0.25, abs=int(columns) * 0.03)
    assert box["x1"] == pytest.approx(int(columns) * 0.5, abs=int(columns) * 0.03)
    assert [f.action for f in feedback] == ["add"]

"""Every page in headless Chromium without a console error, an uncaught exception, a failed
request or an error status, signed out and signed in, ``/docs`` included; and nothing is loaded
from anywhere but RadDraft itself (a hospital network may have no internet)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, Response, expect

from tests.pages.seed import Seeded
from tests.pages.test_browser import sign_in

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@dataclass
class Problems:
    """What went wrong on a page, by kind; empty lists when all is well."""

    console: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not any((self.console, self.exceptions, self.failed, self.statuses, self.foreign))


def watch(page: Page) -> Problems:
    """Record every console error, page error, failed request, 4xx/5xx and off-site request."""
    problems = Problems()

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.console.append(f"{message.type}: {message.text} @ {message.location}")

    def on_request(request: Request) -> None:
        host = urlsplit(request.url).hostname
        if request.url.startswith(("http:", "https:")) and host not in ("127.0.0.1", None):
            problems.foreign.append(request.url)

    def on_failed(request: Request) -> None:
        problems.failed.append(f"{request.method} {request.url}: {request.failure}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            problems.statuses.append(f"{response.status} {response.request.method} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.exceptions.append(str(error)))
    page.on("request", on_request)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    return problems


def settle(page: Page, path: str) -> None:
    page.goto(path)
    page.wait_for_load_state("networkidle")


def test_the_watch_catches_a_missing_file_and_a_script_error(
    new_page: Callable[[], Page],
) -> None:
    # the test must be able to fail: a 404 and a thrown error are both seen
    page = new_page()
    problems = watch(page)
    settle(page, "/static/no-such-file.js")
    page.evaluate("setTimeout(() => { throw new Error('boom'); }, 0)")
    page.wait_for_timeout(200)
    assert problems.statuses and "404" in problems.statuses[0]
    assert problems.exceptions and "boom" in problems.exceptions[0]


def test_every_page_is_clean_signed_out_and_in(
    new_page: Callable[[], Page], seeded: Seeded
) -> None:
    page = new_page()
    problems = watch(page)

    settle(page, "/login")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert problems.empty(), problems

    sign_in(page, username=seeded.users["radiologist"].name)
    expect(page).to_have_url(re.compile(r"/worklist$"))
    page.wait_for_load_state("networkidle")
    for report in (seeded.urgent_report, seeded.demo_report, seeded.routine_report):
        settle(page, f"/reports/{report}")
        expect(page.locator("h1")).to_be_visible()
    settle(page, "/worklist?accession=ACC-1002")
    # The login page of a signed-in user goes on at once, asking without an error status.
    settle(page, "/login?next=/worklist")
    expect(page).to_have_url(re.compile(r"/worklist$"))
    assert problems.empty(), problems

    settle(page, "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("RadDraft review API")
    expect(page.locator(".opblock").first).to_be_visible()
    page.locator(".opblock-summary").first.click()
    page.wait_for_load_state("networkidle")
    assert problems.empty(), problems

    admin = new_page()
    admin_problems = watch(admin)
    sign_in(admin, username=seeded.users["admin"].name, goto="/queue")
    expect(admin).to_have_url(re.compile(r"/queue$"))
    admin.wait_for_load_state("networkidle")
    admin.wait_for_timeout(600)  # the queue page refreshes itself: let one refresh run
    settle(admin, "/docs")
    expect(admin.locator(".swagger-ui .info .title")).to_contain_text("RadDraft review API")
    assert admin_problems.empty(), admin_problems


def test_favicon_and_docs_assets_are_served_locally(
    new_page: Callable[[], Page], seeded: Seeded
) -> None:
    page = new_page()
    for path, kind in (
        ("/favicon.ico", "image/"),
        ("/docs-assets/swagger-ui-bundle.js?v=5.35.0", "javascript"),
        ("/docs-assets/swagger-ui.css?v=5.35.0", "text/css"),
    ):
        response = page.request.get(path)
        assert response.status == 200, path
        assert kind in response.headers["content-type"], path
    html = page.request.get("/docs").text()
    assert "cdn.jsdelivr.net" not in html and "unpkg" not in html
    assert "/docs-assets/swagger-ui-bundle.js" in html
    assert page.request.get("/redoc").status == 404

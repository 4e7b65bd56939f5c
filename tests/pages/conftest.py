"""Fixtures for the pages: seeded data, the web app on a loopback port, and headless Chromium.

``seeded`` is the one place drafts come from. The lead's full-stack fixture (a real worker with
the tiny checkpoint) can replace it by returning a :class:`tests.pages.seed.Seeded`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from raddraft.settings import Settings
from tests.conftest import free_port, reload_settings
from tests.pages.seed import Seeded, seed
from web import create_web_app

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "pages"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture
def pages_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test settings with one PACS destination, so drafts have exports to fail."""
    monkeypatch.setenv("RADDRAFT_DESTINATIONS", "PACS@127.0.0.1:1")
    monkeypatch.setenv("RADDRAFT_WEB_SECRET", "test-secret-not-for-production")
    return reload_settings()


@pytest.fixture
def seeded(pages_settings: Settings, engine: Engine) -> Seeded:
    return seed(pages_settings, engine)


@pytest.fixture
def web_app(pages_settings: Settings, seeded: Seeded) -> FastAPI:
    return create_web_app(pages_settings)


class LiveServer:
    """uvicorn serving an app in a thread of the test process, on a free loopback port."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def live_server(web_app: FastAPI) -> Iterator[LiveServer]:
    with LiveServer(web_app) as server:
        yield server


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One headless Debian Chromium for the session; each test gets a fresh context."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_page(browser: object, live_server: LiveServer) -> Iterator[Callable[[], object]]:
    """Open a fresh browser context (no cookies) at the app; closed after the test."""
    contexts: list[object] = []

    def make() -> object:
        context = browser.new_context(  # type: ignore[attr-defined]
            viewport=VIEWPORT, base_url=live_server.url
        )
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()  # type: ignore[attr-defined]


def shot(page: object, name: str, *, full_page: bool = False) -> Path:
    """Save a screenshot of the page (the 1280x800 window, or all of it) as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)  # type: ignore[attr-defined]
    return path

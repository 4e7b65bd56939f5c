"""``raddraft web`` hands what it built at start to the collector's permanent generation
(issue 23): a full collection walked the 200,000 objects of the imports and the app every few
dozen allocating requests, about 0.1 s each, the p95 of a FHIR page of fifty resources."""

from __future__ import annotations

import gc
import threading
import time
import urllib.request
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner

from raddraft.cli import main
from raddraft.commands.web import server_config
from raddraft.settings import Settings
from tests.conftest import free_port


def test_the_web_command_freezes_what_it_built_before_serving(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen: list[int] = []

    def serve(_server: uvicorn.Server) -> None:
        frozen.append(gc.get_freeze_count())

    monkeypatch.setenv("RADDRAFT_WEB_SECRET", "test-secret-not-for-production")
    monkeypatch.setattr(uvicorn.Server, "run", serve)
    gc.unfreeze()
    try:
        result = CliRunner().invoke(main, ["web", "--port", "1"])
    finally:
        gc.unfreeze()
    assert result.exit_code == 0, result.output
    assert frozen and frozen[0] > 100_000  # the app, its routes, fastapi, pydantic, FHIR models


async def client_of(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering with the client address uvicorn gave it."""
    host = (scope.get("client") or ("", 0))[0]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": host.encode()})


@pytest.mark.parametrize(
    ("proxies", "seen"),
    [("", "127.0.0.1"), ("10.9.9.9", "127.0.0.1"), ("127.0.0.1", "203.0.113.9")],
    ids=["none trusted", "another proxy trusted", "this proxy trusted"],
)
def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    settings: Settings, proxies: str, seen: str
) -> None:
    """A request from 127.0.0.1 saying it forwards 203.0.113.9: the client is 203.0.113.9 only
    when 127.0.0.1 is in RADDRAFT_WEB_TRUSTED_PROXIES (uvicorn alone believes any local
    process), so a sign-in limit counts the real client behind a proxy and no one else can
    pose as another address."""
    configured = settings.model_copy(update={"web_trusted_proxies": _split(proxies)})
    port = free_port()
    server = uvicorn.Server(server_config(client_of, configured, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", headers={"X-Forwarded-For": "203.0.113.9"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read().decode() == seen
    finally:
        server.should_exit = True
        thread.join(10)


def _split(value: str) -> list[str]:
    return Settings(web_trusted_proxies=value).web_trusted_proxies  # type: ignore[call-arg]

"""``raddraft web`` serving HTTPS itself (PS3.15 B.9 / BCP 195 context) to real clients: httpx for
headers, cookies and the sign-in rate limit, ``openssl s_client`` for the protocol versions,
Chromium for a secure context in which the pages raise no Content-Security-Policy violation."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from raddraft.settings import Settings
from tests.certs import certificates
from tests.conftest import free_port
from tests.listener_process import port_open
from tests.pages.seed import PASSWORD, seed

ROOT = Path(__file__).resolve().parents[2]


class Web:
    def __init__(self, port: int, certs: dict[str, Path], log: Path, report: int) -> None:
        self.port, self.certs, self.log, self.report = port, certs, log, report
        self.url = f"https://127.0.0.1:{port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=str(self.certs["ca"]), timeout=20)


@pytest.fixture
def https_web(
    pages_settings: Settings, engine: Engine, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Web]:
    seeded = seed(pages_settings, engine)
    certs = certificates(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "RADDRAFT_WEB_TLS_CERT": str(certs["server_crt"]),
        "RADDRAFT_WEB_TLS_KEY": str(certs["server_key"]),
        "RADDRAFT_LOGIN_MAX_FAILURES": "3",
    }
    if getattr(request, "param", None) == "mutual":
        env["RADDRAFT_WEB_TLS_CA"] = str(certs["ca"])
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "raddraft", "web", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 60
        while not port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(log.read_text())
            time.sleep(0.1)
        yield Web(port, certs, log, seeded.urgent_report)
    finally:
        process.terminate()
        process.wait(20)


def _login_token(client: httpx.Client) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    return token[1]


def test_https_headers_cookies_and_rate_limit(https_web: Web) -> None:
    with https_web.client() as client:
        page = client.get("/login")
        assert page.status_code == 200
        headers = page.headers
        assert headers["strict-transport-security"].startswith("max-age=31536000")
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src 'self'" in headers["content-security-policy"]

        # CSRF: a sign-in without the form's token is refused.
        forged = client.post("/login", data={"username": "curie", "password": PASSWORD})
        assert forged.status_code == 400

        good = {"csrf_token": _login_token(client), "username": "curie", "password": PASSWORD}
        signed_in = client.post("/login", data=good, follow_redirects=False)
        assert signed_in.status_code == 303
        cookie = signed_in.headers["set-cookie"]
        assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie

    with https_web.client() as client:
        for _ in range(3):
            wrong = {"csrf_token": _login_token(client), "username": "curie", "password": "no"}
            assert client.post("/login", data=wrong).status_code == 401
        wrong = {"csrf_token": _login_token(client), "username": "curie", "password": "no"}
        limited = client.post("/login", data=wrong)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) > 0
        # Even the right password waits out the window; another user is not held up.
        right = {"csrf_token": _login_token(client), "username": "curie", "password": PASSWORD}
        assert client.post("/login", data=right).status_code == 429
        other = {"csrf_token": _login_token(client), "username": "admin", "password": "no"}
        assert client.post("/login", data=other).status_code == 401
    assert "sign-in refused, too many failures" in https_web.log.read_text()


def test_https_refuses_tls_1_1_and_serves_1_2_and_1_3(https_web: Web) -> None:
    def s_client(*options: str) -> subprocess.CompletedProcess[str]:
        command = ["openssl", "s_client", "-connect", f"127.0.0.1:{https_web.port}", "-brief"]
        command += ["-CAfile", str(https_web.certs["ca"]), *options]
        return subprocess.run(command, input="", capture_output=True, text=True, timeout=30)

    old = s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.returncode != 0 and "Protocol version: TLSv1.1" not in old.stderr
    assert "Protocol version: TLSv1.2" in s_client("-tls1_2").stderr
    assert "Protocol version: TLSv1.3" in s_client().stderr


def test_chromium_pages_are_a_secure_context_without_csp_violations(
    https_web: Web, browser: object
) -> None:
    context = browser.new_context(ignore_https_errors=True, base_url=https_web.url)  # type: ignore[attr-defined]
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on(
            "console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None
        )
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto("/login")
        page.fill("input[name=username]", "curie")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r".*/worklist"))
        assert page.evaluate("window.isSecureContext") is True
        for path in ("/worklist", f"/reports/{https_web.report}"):
            page.goto(path)
            page.wait_for_load_state("networkidle")
        assert page.locator("img").count() > 0  # the review page's images loaded under the CSP
        violations = [p for p in problems if "Content Security Policy" in p or "Refused to" in p]
        assert violations == [], problems
    finally:
        context.close()


@pytest.mark.parametrize("https_web", ["mutual"], indirect=True)
def test_with_a_web_ca_browsers_need_a_client_certificate(https_web: Web) -> None:
    with pytest.raises(httpx.TransportError), https_web.client() as anonymous:
        anonymous.get("/login")
    with_certificate = ssl.create_default_context(cafile=str(https_web.certs["ca"]))
    with_certificate.load_cert_chain(https_web.certs["client_crt"], https_web.certs["client_key"])
    with httpx.Client(base_url=https_web.url, verify=with_certificate, timeout=20) as client:
        assert client.get("/login").status_code == 200

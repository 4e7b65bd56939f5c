"""Who may see which page, when a session ends, and the sign-in limit (issue 20).

Every page route is walked with every role and compared with its API twin; a session cookie
kept from before sign-out, a password change, a token rotation or disabling stops working; a
stranger's failed sign-ins never lock a valid token out, and the limit holds across two web
apps sharing the database (as two processes do).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import report_drafts as drafts
from raddraft.settings import Settings
from report_drafts.tables import Role, User
from report_drafts.users import add_user, sign_in_failures
from tests.pages.seed import PASSWORD, Seeded
from web import create_web_app
from web.pages.routes import router as page_router
from web.pages.sign_in import SESSION_COOKIE

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

# Each page that shows something, and the API route that answers the same question.
TWINS = {
    "/": "/api/me",
    "/worklist": "/api/worklist",
    "/reports/{report_id}": "/api/reports/{report_id}",
    "/reports/{report_id}/prior/{sop_instance_uid}.png": (
        "/api/reports/{report_id}/images/{image_uid}.png"
    ),
    "/queue": "/api/admin/jobs",
    "/queue/data.json": "/api/admin/jobs",
}
PUBLIC = {"/login", "/login/session"}  # the sign-in form and "am I signed in?" show no data


@pytest.fixture
def client(web_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(web_app) as test_client:
        yield test_client


def _user(engine: Engine, name: str) -> User:
    with Session(engine) as session:
        user = session.query(User).filter(User.name == name).one()
        session.expunge(user)
        return user


def _sender(engine: Engine) -> str:
    """A gateway account (role sender) and its token."""
    with Session(engine) as session:
        _user_row, token = add_user(session, "gateway", Role.sender)
        session.commit()
    return token


def _refused(response: Response) -> bool:
    """Refused: 401/403, or a page's redirect to sign in."""
    if response.status_code in (401, 403):
        return True
    return response.status_code == 303 and response.headers["location"].startswith("/login")


def _form_token(client: TestClient) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert found
    return found.group(1)


def _sign_in(client: TestClient, **fields: str) -> Response:
    return client.post(
        "/login", data={"csrf_token": _form_token(client), **fields}, follow_redirects=False
    )


def _csrf(client: TestClient) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', client.get("/worklist").text)
    assert found
    return found.group(1)


def test_every_page_checks_the_role_its_api_twin_checks(
    client: TestClient, web_app: FastAPI, seeded: Seeded, engine: Engine
) -> None:
    tokens = {role: seeded.users[role].token for role in ("reader", "radiologist", "admin")}
    tokens["sender"] = _sender(engine)
    names = {role: seeded.users[role].name for role in ("reader", "radiologist", "admin")}
    names["sender"] = "gateway"
    assert set(tokens) == {role.value for role in Role}, "a new role needs a row here"

    pages = {r.path for r in page_router.routes if isinstance(r, APIRoute) and "GET" in r.methods}
    assert pages == set(TWINS) | PUBLIC, "every page needs an API twin in TWINS"

    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    report = seeded.urgent_report
    image_uid = client.get(f"/api/reports/{report}/images", headers=admin).json()[0][
        "sop_instance_uid"
    ]
    client.cookies.set(SESSION_COOKIE, web_app.state.page_signer.issue(_user(engine, "admin")))
    prior = re.search(
        rf"/reports/{report}/prior/([^\"]+)\.png", client.get(f"/reports/{report}").text
    )
    assert prior, "the urgent report has a prior image"
    values = {"report_id": str(report), "sop_instance_uid": prior.group(1), "image_uid": image_uid}

    outcomes: dict[tuple[str, str], tuple[int, int]] = {}
    for role, token in tokens.items():
        # The cookie the sign-in form would give (it refuses a sender; the pages must too).
        cookie = web_app.state.page_signer.issue(_user(engine, names[role]))
        for page, twin in TWINS.items():
            client.cookies.clear()
            client.cookies.set(SESSION_COOKIE, cookie)
            shown = client.get(page.format(**values), follow_redirects=False)
            client.cookies.clear()
            answer = client.get(twin.format(**values), headers={"Authorization": f"Bearer {token}"})
            outcomes[role, page] = (shown.status_code, answer.status_code)
            assert _refused(shown) == _refused(answer), (role, page, shown.status_code, answer)
            if _refused(shown):
                assert "ACC-1001" not in shown.text and "Pneumothorax" not in shown.text
    # The table is not vacuous: each role is let in somewhere and refused somewhere.
    assert outcomes["sender", "/worklist"] == (403, 403)
    assert outcomes["sender", "/reports/{report_id}"] == (403, 403)
    assert outcomes["reader", "/worklist"] == (200, 200)
    assert outcomes["radiologist", "/queue"] == (403, 403)
    assert outcomes["admin", "/queue/data.json"] == (200, 200)


def test_a_sender_cannot_sign_in_to_the_pages(
    client: TestClient, web_app: FastAPI, seeded: Seeded, engine: Engine
) -> None:
    refused = _sign_in(client, token=_sender(engine))
    assert refused.status_code == 403
    assert SESSION_COOKIE not in refused.cookies
    assert "no pages" in refused.text
    assert _refused(client.get("/worklist", follow_redirects=False))
    # A cookie of a role with no page (made before the role changed) is not "signed in".
    gateway = _user(engine, "gateway")
    client.cookies.set(SESSION_COOKIE, web_app.state.page_signer.issue(gateway))
    assert client.get("/login/session").json() == {"signed_in": False}


def _kept_cookie_works(client: TestClient, cookie: str) -> bool:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie)
    page = client.get("/worklist", follow_redirects=False)
    api = client.get("/api/worklist")
    assert (page.status_code == 200) == (api.status_code == 200)
    return page.status_code == 200


@pytest.mark.parametrize("ending", ["logout", "password", "token", "disable"])
def test_sessions_end_on_the_server(
    client: TestClient, seeded: Seeded, engine: Engine, ending: str
) -> None:
    assert _sign_in(client, username="curie", password=PASSWORD).status_code == 303
    cookie = client.cookies.get(SESSION_COOKIE)
    assert cookie and _kept_cookie_works(client, cookie)
    if ending == "logout":
        out = client.post("/logout", data={"csrf_token": _csrf(client)}, follow_redirects=False)
        assert out.status_code == 303
    else:
        with Session(engine) as session:
            user = session.query(User).filter(User.name == "curie").one()
            if ending == "password":
                drafts.set_password(session, user, "a brand new password")
            elif ending == "token":
                drafts.rotate_token(session, user)
            else:
                drafts.disable_user(session, user)
            session.commit()
    assert not _kept_cookie_works(client, cookie)
    if ending in ("logout", "token"):
        # The account still works: a fresh sign-in gets a fresh session.
        client.cookies.clear()
        assert _sign_in(client, username="curie", password=PASSWORD).status_code == 303
        fresh = client.cookies.get(SESSION_COOKIE)
        assert fresh and _kept_cookie_works(client, fresh)


def test_a_strangers_bad_tokens_do_not_lock_out_a_valid_token(
    client: TestClient, seeded: Seeded, pages_settings: Settings
) -> None:
    limit = pages_settings.login_max_failures
    for _ in range(limit):
        assert _sign_in(client, token="rdt_" + "x" * 43).status_code == 401
    over = _sign_in(client, token="rdt_" + "y" * 43)
    assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
    # Same address, a real token: in.
    valid = _sign_in(client, token=seeded.users["reader"].token)
    assert valid.status_code == 303 and valid.headers["location"] == "/worklist"
    # ... and signing in did not reset the stranger's count.
    client.cookies.clear()
    assert _sign_in(client, token="rdt_" + "z" * 43).status_code == 429


def test_password_guesses_are_limited_per_account_and_address(
    web_app: FastAPI, seeded: Seeded, pages_settings: Settings
) -> None:
    limit = pages_settings.login_max_failures
    with (
        TestClient(web_app, client=("192.0.2.7", 50000)) as attacker,
        TestClient(web_app, client=("192.0.2.8", 50000)) as colleague,
    ):
        for _ in range(limit):
            assert _sign_in(attacker, username="curie", password="guess").status_code == 401
        # Over the limit the right password is not even checked from this address ...
        held = _sign_in(attacker, username="curie", password=PASSWORD)
        assert held.status_code == 429 and int(held.headers["retry-after"]) > 0
        # ... but another account from the same address, and curie elsewhere, sign in.
        assert _sign_in(attacker, username="reader", password=PASSWORD).status_code == 303
        assert _sign_in(colleague, username="curie", password=PASSWORD).status_code == 303


def test_the_limit_holds_across_web_processes(
    client: TestClient, seeded: Seeded, pages_settings: Settings
) -> None:
    """Two apps share nothing but the database, as two web processes do."""
    limit = pages_settings.login_max_failures
    for _ in range(limit):
        assert _sign_in(client, username="curie", password="guess").status_code == 401
    with TestClient(create_web_app(pages_settings)) as other:
        assert _sign_in(other, username="curie", password=PASSWORD).status_code == 429


def test_failures_leave_the_table_with_their_window(engine: Engine) -> None:
    import datetime as dt

    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with Session(engine) as session:
        for second in range(3):
            drafts.record_sign_in_failure(
                session,
                "name:x",
                "198.51.100.1",
                window_seconds=60,
                now=start + dt.timedelta(seconds=second),
            )
        wait = drafts.sign_in_wait(
            session,
            "name:x",
            "198.51.100.1",
            max_failures=3,
            window_seconds=60,
            now=start + dt.timedelta(seconds=10),
        )
        assert wait == 51  # the oldest of the three leaves at 60 s
        later = start + dt.timedelta(seconds=120)
        drafts.record_sign_in_failure(
            session, "name:y", "198.51.100.2", window_seconds=60, now=later
        )
        assert sign_in_failures(session) == 1
        assert (
            drafts.sign_in_wait(
                session, "name:x", "198.51.100.1", max_failures=3, window_seconds=60, now=later
            )
            == 0
        )

"""Signing in to the pages: a signed sign-in cookie, CSRF tokens, and the API's resolver of it.

The cookie holds no secret and no role, only ``{user id, issued at, nonce, credential
fingerprint, session generation}`` signed with HMAC-SHA256. It is HttpOnly (no script reads it),
SameSite=Strict (no other site's page sends it) and Secure over HTTPS. The user and their role
are looked up again on every request, so a deactivated user or a changed role counts at once.

Sessions end on the server, not only in the browser: the cookie carries the user's session
generation (``users.session_generation``) from when it was issued, and a cookie from an older
generation is no session. Sign-out, a password change, a token rotation and disabling the
account raise the generation (:func:`report_drafts.end_sessions`), so a copy of the cookie
kept from before stops working everywhere at once. Sign-out thereby ends the user's sessions
in every browser (a shared workstation's forgotten session too). The credential fingerprint
stays as a second check for credentials changed outside those functions.

Every state-changing request made with the cookie must also carry the session's CSRF token, in
the form field ``csrf_token`` or the header ``X-CSRF-Token``. The token is derived from the
session nonce, so it is per session and cannot be guessed from outside. The sign-in form itself
is protected by a double-submit cookie (``raddraft_login``) since no session exists yet.

The secret comes from the ``RADDRAFT_WEB_SECRET`` environment variable (set it, the same on
every web process, in production) or is made once and kept in ``data_dir/web-secret``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request, Response
from sqlalchemy.orm import Session

from raddraft.settings import Settings
from report_drafts import User

SESSION_COOKIE = "raddraft_session"
LOGIN_COOKIE = "raddraft_login"  # double-submit CSRF for the sign-in form
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 8 * 3600  # one working shift
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def load_secret(settings: Settings) -> bytes:
    """The signing key: ``RADDRAFT_WEB_SECRET``, or a random key kept in the data directory.

    The file is created once with mode 0600 (O_EXCL, so two processes starting together agree
    on the first one written).
    """
    configured = getattr(settings, "web_secret", None) or os.environ.get("RADDRAFT_WEB_SECRET")
    if configured:
        return hashlib.sha256(str(configured).encode()).digest()
    path = Path(settings.data_dir) / "web-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
            handle.flush()
            os.fsync(handle.fileno())
    for _ in range(50):  # another process may be between create and write
        text = path.read_text().strip()
        if text:
            return bytes.fromhex(text)
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty; delete it or set RADDRAFT_WEB_SECRET")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SignIn:
    """A verified session cookie's content."""

    user_id: int
    issued_at: int
    nonce: str
    fingerprint: str
    generation: int


class Signer:
    """Signs and checks session cookies and CSRF tokens with one key."""

    def __init__(self, secret: bytes, max_age: int = SESSION_SECONDS) -> None:
        self._secret = secret
        self.max_age = max_age

    def _mac(self, purpose: str, data: str) -> str:
        return _b64(hmac.new(self._secret, f"{purpose}\0{data}".encode(), "sha256").digest())

    def fingerprint(self, user: User) -> str:
        """Changes when the user's token or password changes, ending older sessions."""
        material = f"{user.id}:{user.token_hash or ''}:{user.password_hash or ''}"
        return self._mac("fingerprint", material)[:16]

    def issue(self, user: User, now: float | None = None) -> str:
        payload = {
            "u": user.id,
            "t": int(now if now is not None else time.time()),
            "n": secrets.token_urlsafe(16),
            "f": self.fingerprint(user),
            "g": user.session_generation or 0,
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._mac('session', body)}"

    def read(self, cookie: str | None, now: float | None = None) -> SignIn | None:
        """The session in ``cookie`` if its signature holds and it has not expired."""
        if not cookie or "." not in cookie:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        try:
            payload = json.loads(_unb64(body))
            found = SignIn(
                user_id=int(payload["u"]),
                issued_at=int(payload["t"]),
                nonce=str(payload["n"]),
                fingerprint=str(payload["f"]),
                generation=int(payload["g"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        age = (now if now is not None else time.time()) - found.issued_at
        if age < -60 or age > self.max_age:
            return None
        return found

    def csrf_token(self, sign_in: SignIn) -> str:
        return self._mac("csrf", sign_in.nonce)[:32]

    def login_csrf(self, login_nonce: str) -> str:
        return self._mac("login", login_nonce)[:32]


def signer_of(request: Request) -> Signer:
    signer: Signer = request.app.state.page_signer
    return signer


def sign_in_of(request: Request) -> SignIn | None:
    return signer_of(request).read(request.cookies.get(SESSION_COOKIE))


def user_of_sign_in(request: Request, session: Session) -> User | None:
    """The active user behind the request's session cookie, ignoring CSRF (for page views)."""
    found = sign_in_of(request)
    if found is None:
        return None
    user = session.get(User, found.user_id)
    if user is None or not user.active:
        return None
    if found.generation != (user.session_generation or 0):
        return None  # ended on the server: sign-out, new password or token, disabled
    if not hmac.compare_digest(signer_of(request).fingerprint(user), found.fingerprint):
        return None
    return user


def csrf_ok(request: Request, submitted: str | None) -> bool:
    """Whether ``submitted`` is the CSRF token of the request's session."""
    found = sign_in_of(request)
    if found is None or not submitted:
        return False
    return hmac.compare_digest(signer_of(request).csrf_token(found), submitted)


def resolve_for_api(request: Request, session: Session) -> User | None:
    """The API's session resolver: the cookie's user, and for changes only with the CSRF header.

    A cross-site form cannot set a header and a SameSite=Strict cookie is not sent cross-site
    anyway; the header check holds even for a browser that ignores SameSite.
    """
    user = user_of_sign_in(request, session)
    if user is None:
        return None
    if request.method not in SAFE_METHODS and not csrf_ok(
        request, request.headers.get(CSRF_HEADER)
    ):
        return None
    return user


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_sign_in_cookie(response: Response, request: Request, user: User) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        signer_of(request).issue(user),
        max_age=signer_of(request).max_age,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")


def clear_sign_in_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


def login_form_token(request: Request) -> tuple[str, str | None]:
    """The sign-in form's CSRF token, and a new double-submit nonce to set (None: keep)."""
    nonce = request.cookies.get(LOGIN_COOKIE)
    fresh = None
    if not nonce or len(nonce) > 64:
        nonce = fresh = secrets.token_urlsafe(16)
    return signer_of(request).login_csrf(nonce), fresh


def set_login_cookie(response: Response, request: Request, nonce: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/login",
    )


def login_csrf_ok(request: Request, submitted: str | None) -> bool:
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not submitted:
        return False
    return hmac.compare_digest(signer_of(request).login_csrf(nonce), submitted)

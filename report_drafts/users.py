"""Users, roles and their credentials.

An API token is 32 random bytes shown once; only its SHA-256 is stored (a token has full entropy,
so a fast hash is enough and lets a lookup be one indexed query). Passwords, for the pages'
sign-in, are optional and stored with scrypt and a per-user salt. Comparisons use
:func:`hmac.compare_digest` so timing says nothing about how much of a secret matched.

Every change of credentials or access (:func:`rotate_token`, :func:`set_password`,
:func:`disable_user`) and every sign-out (:func:`end_sessions`) raises the user's session
generation, which ends the pages' sessions issued before on the server.

Failed sign-ins are kept in the database (:class:`SignInFailure`), so the sign-in limit holds
across every web process; see :func:`sign_in_wait`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from raddraft.db import utcnow
from report_drafts.states import InvalidRequest
from report_drafts.tables import Role, SignInFailure, User

TOKEN_PREFIX = "rdt_"  # recognisable in logs and secret scanners
TOKEN_SUBJECT = "token"  # a token names no account: its failures count per address
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


#: NIST SP 800-63B-4 3.1.1.2: a password that is the only factor (as the pages' sign-in is)
#: SHALL have at least 15 characters, and at least 64 SHOULD be allowed; the upper bound keeps
#: what a sign-in form makes the server hash bounded.
PASSWORD_MIN_CHARS = 15
PASSWORD_MAX_CHARS = 256


def check_new_password(password: str) -> None:
    """Refuse (:class:`InvalidRequest`) a new password shorter or longer than the bounds."""
    if not PASSWORD_MIN_CHARS <= len(password) <= PASSWORD_MAX_CHARS:
        raise InvalidRequest(
            f"a password has {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters "
            f"(NIST SP 800-63B: a phrase of a few words), not {len(password)}"
        )


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def check_password(stored: str | None, password: str) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt_b64, digest_b64 = stored.split("$", 2)
    digest = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt_b64),
        **_SCRYPT,
    )
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def add_user(
    session: Session,
    name: str,
    role: Role | str,
    *,
    display_name: str = "",
    password: str | None = None,
) -> tuple[User, str]:
    """Create a user and return it with its API token (the only time the token is visible)."""
    role = Role(role)
    if not name or len(name) > 64:
        raise InvalidRequest("a user name has 1 to 64 characters")
    if password:
        check_new_password(password)
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise InvalidRequest(f"user {name!r} exists")
    token = new_token()
    user = User(
        name=name,
        role=role,
        display_name=display_name or name,
        token_hash=hash_token(token),
        password_hash=hash_password(password) if password else None,
        active=True,
    )
    session.add(user)
    session.flush()
    return user, token


def end_sessions(session: Session, user: User) -> None:
    """End every page session ``user`` holds now (sign-out ends them on every browser)."""
    user.session_generation = (user.session_generation or 0) + 1
    session.flush()


def rotate_token(session: Session, user: User) -> str:
    """Give ``user`` a new token; the old one and the sessions made before stop working."""
    token = new_token()
    user.token_hash = hash_token(token)
    end_sessions(session, user)
    return token


def set_password(session: Session, user: User, password: str | None) -> None:
    """Set (None: remove) ``user``'s sign-in password; their sessions end."""
    if password:
        check_new_password(password)
    user.password_hash = hash_password(password) if password else None
    end_sessions(session, user)


def disable_user(session: Session, user: User) -> None:
    """Disable ``user``: their token stops working and their sessions end."""
    user.active = False
    end_sessions(session, user)


def user_for_token(session: Session, token: str) -> User | None:
    """The active user holding ``token``, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    wanted = hash_token(token)
    user = session.scalar(select(User).where(User.token_hash == wanted))
    if user is None or not user.active or user.token_hash is None:
        return None
    # The indexed lookup found it; the constant-time compare keeps the check honest if the
    # lookup is ever changed to a scan.
    return user if hmac.compare_digest(user.token_hash, wanted) else None


def user_for_password(session: Session, name: str, password: str) -> User | None:
    """The active user ``name`` if ``password`` is theirs (for the pages' sign-in form)."""
    if len(password) > PASSWORD_MAX_CHARS:  # no password is that long: nothing to hash
        return None
    # No user is called a name with NUL, and no database text column holds it: not asked.
    user = None if "\x00" in name else session.scalar(select(User).where(User.name == name))
    if user is None or not user.active:
        # Spend the same time as a real check so the answer does not reveal which names exist.
        check_password(_DUMMY_HASH, password)
        return None
    return user if check_password(user.password_hash, password) else None


_DUMMY_HASH = hash_password("not a password")


# -- the sign-in limit (OWASP Authentication Cheat Sheet: per account and source) -------------


def password_subject(name: str) -> str:
    """The limit's subject for a password sign-in: the account tried, whether it exists."""
    return "name:" + name.strip().lower()[:64].replace("\x00", "\ufffd")


def sign_in_wait(
    session: Session,
    subject: str,
    address: str,
    *,
    max_failures: int,
    window_seconds: float,
    now: dt.datetime | None = None,
) -> int:
    """Seconds until ``subject`` may try again from ``address``; 0 when allowed now.

    Refused while ``max_failures`` failures lie within the window: the wait ends when the
    oldest of the newest ``max_failures`` leaves it. One bounded, indexed query.
    """
    now = now or utcnow()
    since = now - dt.timedelta(seconds=window_seconds)
    newest = list(
        session.scalars(
            select(SignInFailure.at)
            .where(
                SignInFailure.subject == subject,
                SignInFailure.address == address[:64],
                SignInFailure.at > since,
            )
            .order_by(SignInFailure.at.desc())
            .limit(max_failures)
        )
    )
    if len(newest) < max_failures:
        return 0
    left = window_seconds - (now - newest[-1]).total_seconds()
    return max(int(left) + 1, 1)


def record_sign_in_failure(
    session: Session,
    subject: str,
    address: str,
    *,
    window_seconds: float,
    now: dt.datetime | None = None,
) -> None:
    """Count a failed sign-in; failures older than the window are deleted on the way, so the
    table holds one window's failures at most."""
    now = now or utcnow()
    since = now - dt.timedelta(seconds=window_seconds)
    session.execute(delete(SignInFailure).where(SignInFailure.at <= since))
    session.add(SignInFailure(subject=subject[:80], address=address[:64], at=now))
    session.flush()


def clear_sign_in_failures(session: Session, subject: str, address: str) -> None:
    """Forget ``subject``'s failures from ``address`` after it signed in."""
    session.execute(
        delete(SignInFailure).where(
            SignInFailure.subject == subject, SignInFailure.address == address[:64]
        )
    )


def sign_in_failures(session: Session) -> int:
    """How many failures the table holds (for tests and figures)."""
    return int(session.scalar(select(func.count()).select_from(SignInFailure)) or 0)

"""Users, roles and their credentials.

An API token is 32 random bytes shown once; only its SHA-256 is stored (a token has full entropy,
so a fast hash is enough and lets a lookup be one indexed query). Passwords, for the pages'
sign-in, are optional and stored with scrypt and a per-user salt. Comparisons use
:func:`hmac.compare_digest` so timing says nothing about how much of a secret matched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from report_drafts.states import InvalidRequest
from report_drafts.tables import Role, User

TOKEN_PREFIX = "rdt_"  # recognisable in logs and secret scanners
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


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


def rotate_token(session: Session, user: User) -> str:
    """Give ``user`` a new token; the old one stops working at once."""
    token = new_token()
    user.token_hash = hash_token(token)
    session.flush()
    return token


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
    user = session.scalar(select(User).where(User.name == name))
    if user is None or not user.active:
        # Spend the same time as a real check so the answer does not reveal which names exist.
        check_password(_DUMMY_HASH, password)
        return None
    return user if check_password(user.password_hash, password) else None


_DUMMY_HASH = hash_password("not a password")

"""Who is asking: the database session and user dependencies of every route.

A user is resolved from ``Authorization: Bearer <token>`` first, then from any *session
resolver* the app was given (the pages of issue 6 plug a cookie session in through
``app.state.session_resolvers`` without touching the routes). No user: 401. A user whose role
is not allowed: 403. Roles are checked here *and* again inside the lifecycle functions, so a
route that forgot its dependency still cannot sign.

:data:`ACCESS` is the one role table: the API's dependencies (:data:`Viewer`,
:data:`Radiologist`, :data:`Admin`, the DICOMweb sender) and the pages' (``web.pages``) are made
from it, so a page never shows what its API twin refuses (issue 20).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from report_drafts import Role, User, user_for_token

# A session resolver: (request, db session) -> the user of a cookie session, or None.
SessionResolver = Callable[[Request, Session], User | None]


def db_session(request: Request) -> Iterator[Session]:
    """A database session per request; routes commit what they change, errors roll back."""
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


DbSession = Annotated[Session, Depends(db_session)]


# Declared in the OpenAPI document as the HTTP bearer scheme (RFC 6750), so /docs can
# authorise with a token; auto_error=False: no header falls through to the cookie session.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token from `raddraft users add` or `raddraft users token` (rdt_...).",
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def current_user(request: Request, session: DbSession, credentials: Bearer) -> User:
    """The authenticated user, or 401."""
    token = credentials.credentials.strip() if credentials else None
    token = token or None
    user = user_for_token(session, token) if token else None
    if user is None and token is None:
        resolvers: list[SessionResolver] = getattr(request.app.state, "session_resolvers", [])
        for resolve in resolvers:
            user = resolve(request, session)
            if user is not None:
                break
    if user is None or not user.active:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "authentication required: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.user = user
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def require(*roles: Role) -> Callable[[User], User]:
    """A dependency that lets only ``roles`` through (403 otherwise)."""
    allowed = frozenset(roles)

    def check(user: CurrentUser) -> User:
        if Role(user.role) not in allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"role {user.role!r} may not do this; needs {sorted(r.value for r in allowed)}",
            )
        return user

    return check


class Access(enum.StrEnum):
    """What a route does, for the role table."""

    view = "view"  # read reports, images and patient data
    review = "review"  # edit and sign
    administer = "administer"  # the queue, retries, requeue
    store = "store"  # STOW-RS: put instances in, read nothing


#: Who may do what: the API's routes and the pages both ask this table.
ACCESS: Mapping[Access, frozenset[Role]] = {
    Access.view: frozenset({Role.reader, Role.radiologist, Role.admin}),
    Access.review: frozenset({Role.radiologist}),
    Access.administer: frozenset({Role.admin}),
    Access.store: frozenset({Role.sender, Role.admin}),
}


def allowed(user: User, access: Access) -> bool:
    """Whether ``user``'s role may ``access``."""
    return Role(user.role) in ACCESS[access]


Viewer = Annotated[User, Depends(require(*ACCESS[Access.view]))]
Radiologist = Annotated[User, Depends(require(*ACCESS[Access.review]))]
Admin = Annotated[User, Depends(require(*ACCESS[Access.administer]))]
Sender = Annotated[User, Depends(require(*ACCESS[Access.store]))]

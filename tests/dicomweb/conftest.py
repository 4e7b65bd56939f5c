"""Fixtures for the DICOMweb tests: the web app on a loopback port and users with tokens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts.tables import Role
from report_drafts.users import add_user
from tests.orthanc import orthanc, orthanc_factory  # noqa: F401
from tests.pages.conftest import LiveServer
from web import create_web_app


@pytest.fixture
def tokens(engine: Engine) -> dict[str, str]:
    """A sending gateway, a reader and a radiologist, by role -> API token."""
    made = {}
    with session_scope(engine) as session:
        for name, role in (
            ("gateway", Role.sender),
            ("reader", Role.reader),
            ("rad", Role.radiologist),
        ):
            _user, token = add_user(session, name, role, display_name=f"{name}^test")
            made[role.value] = token
    return made


@pytest.fixture
def web(settings: Settings) -> Iterator[LiveServer]:
    """``raddraft web``'s app (API, DICOMweb, pages) served by uvicorn on a free port."""
    with LiveServer(create_web_app(settings)) as server:
        yield server

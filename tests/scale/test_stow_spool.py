"""A STOW-RS body is streamed to a temporary file, not held in memory (issue #23): a request
larger than the spool's memory part is written to disk as it arrives and parsed from there,
and its instances are stored as from a small one."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dicom_listener.tables import Instance
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts.tables import Role
from report_drafts.users import add_user
from tests.dicom_factory import make_cxr
from web import create_web_app
from web.api import dicomweb_routes

BOUNDARY = "spoolBOUNDARY"


def related(*parts: bytes) -> bytes:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


def test_a_stow_body_goes_to_disk_as_it_arrives(
    settings: Settings, engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with session_scope(engine) as session:
        _user, token = add_user(session, "gateway", Role.sender, display_name="gw^test")
    spools: list[Any] = []
    real = tempfile.SpooledTemporaryFile

    def recording(*args: Any, **kwargs: Any) -> Any:
        spools.append(real(*args, **kwargs))
        return spools[-1]

    monkeypatch.setattr(dicomweb_routes, "SPOOL_MEMORY_BYTES", 4096, raising=False)
    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", recording)
    study = str(generate_uid())
    files = [
        make_cxr(tmp_path / f"{n}.dcm", study_uid=study, view=view, instance_number=n)
        for n, view in enumerate(("PA", "LATERAL"), start=1)
    ]
    body = related(*((tmp_path / f"{n}.dcm").read_bytes() for n in (1, 2)))
    assert len(body) > 4096 and len(files) == 2
    with TestClient(create_web_app(settings)) as client:
        answer = client.post(
            "/dicomweb/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                "Authorization": f"Bearer {token}",
            },
        )
    assert answer.status_code == 200, answer.text
    [spool] = spools
    assert spool._rolled and spool.closed  # on disk while it was read, and gone after
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 2

"""STOW-RS bounds, each found by bench/fuzz.py: a body over RADDRAFT_DICOMWEB_MAX_REQUEST_MB is
413 whether its Content-Length says so or it streams in chunked (the web process never holds
more); a boundary that is missing, too long or not in the body is 400 before any filing; an
instance refused for breaking the listener's bounds (a deflate bomb) is 409, not the 503 that
tells a sender to retry, and its UIDs are read without inflating it whole; and the service
still stores a valid instance after each."""

from __future__ import annotations

import http.client
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest
from pydicom import dcmwrite
from pydicom.filebase import DicomBytesIO
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dicom_listener.tables import Instance
from raddraft.db import session_scope
from raddraft.settings import Settings
from tests import hostile
from tests.conftest import reload_settings
from tests.dicom_factory import make_cxr
from tests.pages.conftest import LiveServer
from web import create_web_app
from web.dicomweb import stow

BOUNDARY = "limitBOUNDARY"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def related(*parts: bytes) -> bytes:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def small_web(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("RADDRAFT_DICOMWEB_MAX_REQUEST_MB", "1")
    monkeypatch.setenv("RADDRAFT_MAX_DATASET_MB", "4")
    with LiveServer(create_web_app(reload_settings())) as server:
        yield server


def post(web: LiveServer, token: str, body: bytes, content_type: str = CONTENT_TYPE) -> int:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {token}"}
    return httpx.post(f"{web.url}/dicomweb/studies", content=body, headers=headers).status_code


def instances(engine: Engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(Instance)) or 0


def test_a_body_over_the_limit_is_413_declared_or_chunked(
    engine: Engine, small_web: LiveServer, tokens: dict[str, str]
) -> None:
    token = tokens["sender"]
    assert post(small_web, token, related(b"\0" * (2 << 20))) == 413

    # Declared 10 GB, nothing sent: refused on the header, without waiting for a body.
    connection = http.client.HTTPConnection("127.0.0.1", small_web.port, timeout=10)
    connection.putrequest("POST", "/dicomweb/studies")
    for name, value in (
        ("Content-Type", CONTENT_TYPE),
        ("Authorization", f"Bearer {token}"),
        ("Content-Length", str(10 << 30)),
    ):
        connection.putheader(name, value)
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()

    # Chunked, no length at all: counted as it streams in.
    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"\0" * (1 << 20)

    headers = {"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {token}"}
    answer = httpx.post(f"{small_web.url}/dicomweb/studies", content=chunks(), headers=headers)
    assert answer.status_code == 413
    assert "RADDRAFT_DICOMWEB_MAX_REQUEST_MB" in answer.json()["detail"]
    assert instances(engine) == 0
    assert post(small_web, token, related(hostile.valid(32, 32))) == 200  # still serving
    assert instances(engine) == 1


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/related; type="application/dicom"',  # no boundary
        'multipart/related; type="application/dicom"; boundary=other',  # not in the body
        f'multipart/related; type="application/dicom"; boundary={"b" * 201}',  # Orthanc: 73
    ],
)
def test_a_boundary_that_does_not_frame_the_body_is_400(
    engine: Engine, small_web: LiveServer, tokens: dict[str, str], content_type: str
) -> None:
    assert post(small_web, tokens["sender"], related(hostile.valid(32, 32)), content_type) == 400
    assert instances(engine) == 0


def test_an_instance_over_the_bounds_is_409_not_retry_later(
    engine: Engine, small_web: LiveServer, tokens: dict[str, str]
) -> None:
    headers = {"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {tokens['sender']}"}
    answer = httpx.post(
        f"{small_web.url}/dicomweb/studies",
        content=related(hostile.deflate_bomb(64)),
        headers=headers,
    )
    assert answer.status_code == 409, answer.text
    assert "Retry-After" not in answer.headers
    failed = answer.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xA700]  # FailureReason: the listener's status
    assert instances(engine) == 0


def test_a_deflated_part_is_identified_without_inflating_it_whole() -> None:
    ds = make_cxr(None, rows=64, cols=64)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    assert stow.identify(buffer.getvalue())[1:3] == (ds.SOPInstanceUID, ds.StudyInstanceUID)
    bomb = hostile.deflate_bomb(64)
    started = tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        stow.identify(bomb)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        if not started:
            tracemalloc.stop()
    assert peak < 8 << 20  # bytes; pydicom inflating the 64 MB bomb whole took 128 MB

"""Requests PostgreSQL would refuse whole (a 500) are refused as malformed first: a number past a
32-bit SQL INTEGER wherever a route takes an id or a number (422), and NUL in a path or a query
(400), which no database text column holds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from raddraft.settings import Settings
from tests.drafts.conftest import auth
from tests.drafts.helpers import make_draft

BIG = "9" * 14
ROUTES = [
    ("get", f"/api/reports/{BIG}", "rad"),
    ("get", f"/api/reports/1/versions/{BIG}", "rad"),
    ("post", f"/api/reports/{BIG}/sign", "rad"),
    ("post", f"/api/reports/{BIG}/edit", "rad"),
    ("get", f"/api/reports/{BIG}/sent", "rad"),
    ("get", f"/api/reports/{BIG}/images", "rad"),
    ("get", f"/api/worklist?priority={BIG}", "rad"),
    ("post", f"/api/admin/jobs/{BIG}/retry", "admin"),
    ("post", f"/api/admin/study-versions/{BIG}/requeue", "admin"),
    ("post", f"/api/critical-notifications/{BIG}/acknowledge", "rad"),
]


@pytest.mark.parametrize(("method", "path", "role"), ROUTES)
def test_an_id_past_the_database_integer_is_a_malformed_request(
    client: TestClient, tokens: dict[str, str], method: str, path: str, role: str
) -> None:
    body = {"json": {"expected_version": 1, "edit_reason": "none"}} if method == "post" else {}
    answer = getattr(client, method)(path, headers=auth(tokens[role]), **body)
    assert answer.status_code == 422, (path, answer.status_code, answer.text[:200])
    # The id or number is what was refused, not the body (an edit takes no edit_reason).
    assert {"path", "query"} & {error["loc"][0] for error in answer.json()["detail"]}


@pytest.mark.parametrize(
    "path",
    [
        "/api/worklist?patient_id=%00",
        "/dicomweb/studies?PatientID=A%00",
        "/dicomweb/studies/1.2%00/series",
        "/fhir/DiagnosticReport/a%00b",
        "/fhir/DiagnosticReport?identifier=%00",
    ],
)
def test_nul_in_a_path_or_query_is_refused(
    client: TestClient, tokens: dict[str, str], path: str
) -> None:
    answer = client.get(path, headers=auth(tokens["rad"]))
    assert answer.status_code == 400, (path, answer.status_code, answer.text[:200])
    assert "NUL" in answer.json()["detail"]


def test_a_body_past_the_bound_is_refused_before_it_is_held(
    client: TestClient, tokens: dict[str, str]
) -> None:
    """FastAPI reads a body whole before it checks who is calling: beyond a megabyte it is
    refused (413), declared or streamed, signed in or not; report texts have a length."""
    big = b'{"expected_version": 1, "impression": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    json_type = {"Content-Type": "application/json"}
    declared = client.post("/api/reports/1/edit", content=big, headers=json_type)
    assert declared.status_code == 413, declared.text[:200]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = client.post(
        "/api/reports/1/edit", content=chunks(), headers={**json_type, **auth(tokens["rad"])}
    )
    assert streamed.status_code == 413, streamed.text[:200]
    long_text = {"expected_version": 1, "impression": "x" * 20_001}
    too_long = client.post("/api/reports/1/edit", json=long_text, headers=auth(tokens["rad"]))
    assert too_long.status_code == 422


def test_a_box_of_nan_or_infinity_is_refused(
    client: TestClient, tokens: dict[str, str], engine: Engine, settings: Settings
) -> None:
    """JSON as Python reads it admits NaN and Infinity: such a box was stored (SQLite) or made
    PostgreSQL refuse the statement (a 500)."""
    report_id, _ = make_draft(engine, settings, patient_id="PN1", accession="AN1")
    headers = {**auth(tokens["rad"]), "Content-Type": "application/json"}
    sop = client.get(f"/api/reports/{report_id}/images", headers=headers).json()[0]
    for corners in (
        '"x0": NaN, "y0": 1, "x1": 5, "y1": 5',
        '"x0": 1, "y0": 1, "x1": Infinity, "y1": 5',
    ):
        body = (
            '{"expected_version": 1, "label": "Edema", "sop_instance_uid": "'
            + sop["sop_instance_uid"]
            + '", "box": {'
            + corners
            + "}}"
        )
        answer = client.post(f"/api/reports/{report_id}/findings", content=body, headers=headers)
        assert answer.status_code == 422, answer.text[:200]
    assert client.get(f"/api/reports/{report_id}", headers=headers).json()["current_version"] == 1

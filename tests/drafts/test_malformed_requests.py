"""Requests PostgreSQL would refuse whole (a 500) are refused as malformed first: a number past a
32-bit SQL INTEGER wherever a route takes an id or a number (422), and NUL in a path or a query
(400), which no database text column holds."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.drafts.conftest import auth

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

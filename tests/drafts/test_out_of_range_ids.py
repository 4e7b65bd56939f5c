"""A number past a 32-bit SQL INTEGER anywhere a route takes an id or a number is a malformed
request (422), never handed to PostgreSQL, which refuses the whole query with a 500."""

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

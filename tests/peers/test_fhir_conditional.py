"""Every FHIR PUT RadDraft makes is conditional (FHIR R4 http.html "Conditional Create",
"Managing Resource Contention"): its own resources are created ``If-None-Match: *``, shared
ones updated ``If-Match`` the version read (or created when absent), and a precondition the
server refuses is a conflict for a person, never an overwrite. Each body sent is valid R4B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from peers import FhirConflictError, Outbound
from peers.fhir_rest import FhirSender
from tests.fhir_server import FhirServer

REPORT = {
    "resourceType": "DiagnosticReport",
    "id": "rep-9",
    "status": "preliminary",
    "code": {"text": "XR Chest 2 Views"},
    "issued": "2026-12-02T09:00:00Z",
}
DEVICE = {"resourceType": "Device", "id": "dev-9", "status": "active"}


def _outbound(tmp_path: Path, resource: dict[str, Any], if_match: str | None = None) -> Outbound:
    path = tmp_path / f"{resource['resourceType']}-{resource['id']}-{len(list(tmp_path.iterdir()))}"
    path.write_text(json.dumps(resource), encoding="utf-8")
    return Outbound(f"{resource['resourceType']}/{resource['id']}", path, if_match=if_match)


def _all_valid_r4b(server: FhirServer) -> None:
    for _path, _type, body in server.puts:
        get_fhir_model_class(body["resourceType"]).model_validate(body)


def test_own_resources_are_created_if_none_match(fhir_server: FhirServer, tmp_path: Path) -> None:
    target = FhirSender(fhir_server.url)
    first = target.send([_outbound(tmp_path, REPORT)])
    assert fhir_server.if_none_match == ["*"]
    assert fhir_server.if_match == [None]
    assert first.responses["DiagnosticReport/rep-9"]["etag"] == 'W/"1"'
    # The same create again (its answer was lost): the server holds this very one.
    again = target.send([_outbound(tmp_path, REPORT)])
    assert again.responses["DiagnosticReport/rep-9"]["already_current"] is True
    # A report of that id written by another system is not overwritten.
    other = {**REPORT, "issued": "2026-12-03T09:00:00Z"}
    with pytest.raises(FhirConflictError) as conflict:
        target.send([_outbound(tmp_path, other)])
    assert conflict.value.status_code == 412 and "If-None-Match" in str(conflict.value)
    assert [v["issued"] for v in fhir_server.history["/fhir/DiagnosticReport/rep-9"]] == [
        REPORT["issued"]
    ]
    _all_valid_r4b(fhir_server)


def test_shared_resources_are_updated_if_match_the_version_read(
    fhir_server: FhirServer, tmp_path: Path
) -> None:
    target = FhirSender(fhir_server.url)
    target.send([_outbound(tmp_path, DEVICE)])
    assert (fhir_server.if_none_match, fhir_server.if_match) == (["*"], [None])
    # Another system changed it: RadDraft reads the current version and names it.
    fhir_server.change_behind_our_back("/fhir/Device/dev-9", status="inactive")
    sent = target.send([_outbound(tmp_path, DEVICE)])
    assert fhir_server.if_match[-1] == 'W/"2"'
    assert fhir_server.if_none_match[-1] is None
    assert sent.responses["Device/dev-9"]["etag"] == 'W/"3"'
    assert sent.responses["Device/dev-9"]["if_match"] == 'W/"2"'
    _all_valid_r4b(fhir_server)


def test_a_server_that_cannot_read_back_gets_a_plain_update(
    fhir_server: FhirServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read not implemented (501): nothing to condition on, so an unconditional update; a
    read that fails for the moment (503) is a transient failure, tried again later."""
    from peers import FhirTransientError

    target = FhirSender(fhir_server.url)
    outcome = {"resourceType": "OperationOutcome"}
    monkeypatch.setattr(fhir_server, "get", lambda _path: (501, outcome, None))
    target.send([_outbound(tmp_path, DEVICE)])
    assert (fhir_server.if_none_match, fhir_server.if_match) == ([None], [None])
    monkeypatch.setattr(fhir_server, "get", lambda _path: (503, outcome, None))
    with pytest.raises(FhirTransientError):
        target.send([_outbound(tmp_path, DEVICE)])
    assert len(fhir_server.puts) == 1  # not sent blind after a failed read

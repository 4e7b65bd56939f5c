"""A real HTTP server in a thread standing in for a FHIR server, versioned like a real one.

Each PUT is recorded and answered 200 (201 on create), or the status ``answers`` gives for a
path (``default`` for the rest). Like a real FHIR server (FHIR R4 http.html: update, vread,
history, "Managing Resource Contention") it keeps every version of each resource: the answer
carries ``ETag: W/"<versionId>"`` and the body's ``meta.versionId``; ``If-Match`` with another
ETag than the current one, or ``If-None-Match: *`` when the resource exists, is refused with
412 Precondition Failed and changes nothing; ``GET
[type]/[id]`` reads the current version, ``GET [type]/[id]/_history/[vid]`` an old one and
``GET [type]/[id]/_history`` the history, newest first.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class FhirServer:
    """``url`` is the base (``http://127.0.0.1:<port>/fhir/``); ``puts`` holds (path,
    Content-Type, body) in arrival order, ``if_match`` the If-Match header of each PUT (or
    ``None``), ``history`` every stored version by path, oldest first."""

    answers: dict[str, int] = field(default_factory=dict)
    default: int = 200
    puts: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    if_match: list[str | None] = field(default_factory=list)
    if_none_match: list[str | None] = field(default_factory=list)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        server = self
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any], etag: str | None = None) -> None:
                answer = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                if etag:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_PUT(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    status, answer, etag = server.put(
                        self.path,
                        self.headers["Content-Type"],
                        self.headers.get("If-Match"),
                        body,
                        if_none_match=self.headers.get("If-None-Match"),
                    )
                self._send(status, answer, etag)

            def do_GET(self) -> None:
                with server.lock:
                    status, answer, etag = server.get(self.path)
                self._send(status, answer, etag)

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def etag(version_id: int) -> str:
        return f'W/"{version_id}"'

    def put(
        self,
        path: str,
        content_type: str,
        if_match: str | None,
        body: dict[str, Any],
        *,
        if_none_match: str | None = None,
    ) -> tuple[int, dict[str, Any], str | None]:
        self.puts.append((path, content_type, body))
        self.if_match.append(if_match)
        self.if_none_match.append(if_none_match)
        versions = self.history.setdefault(path, [])
        current = self.etag(len(versions)) if versions else None
        exists_already = if_none_match == "*" and bool(versions)
        if (if_match is not None and if_match != current) or exists_already:
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "conflict",
                        "diagnostics": f"If-Match {if_match} but the current version is {current}",
                    }
                ],
            }
            return 412, outcome, current
        status = self.answers.get(path, self.default)
        if status >= 400:
            return status, {"resourceType": "OperationOutcome"}, current
        stored = {**body, "meta": {**body.get("meta", {}), "versionId": str(len(versions) + 1)}}
        versions.append(stored)
        return (201 if len(versions) == 1 else status), stored, self.etag(len(versions))

    def get(self, path: str) -> tuple[int, dict[str, Any], str | None]:
        base, _, rest = path.partition("/_history")
        versions = self.history.get(base, [])
        if not versions:
            return 404, {"resourceType": "OperationOutcome"}, None
        if rest.startswith("/") and rest[1:].isdigit():
            number = int(rest[1:])
            if not 1 <= number <= len(versions):
                return 404, {"resourceType": "OperationOutcome"}, None
            return 200, versions[number - 1], self.etag(number)
        if path.endswith("/_history"):
            entries = [{"resource": v} for v in reversed(versions)]
            bundle = {"resourceType": "Bundle", "type": "history", "entry": entries}
            return 200, bundle, None
        return 200, versions[-1], self.etag(len(versions))

    def current(self, path: str) -> dict[str, Any]:
        """The current version stored at ``path`` (``/fhir/<Type>/<id>``)."""
        return self.history[path][-1]

    def change_behind_our_back(self, path: str, **fields: Any) -> None:
        """Another system updates the resource: a new version RadDraft did not write."""
        with self.lock:
            versions = self.history[path]
            versions.append(
                {**versions[-1], **fields, "meta": {"versionId": str(len(versions) + 1)}}
            )

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def fhir_server() -> Iterator[FhirServer]:
    server = FhirServer()
    yield server
    server.close()

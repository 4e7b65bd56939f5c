"""Report resources to a FHIR server by RESTful update (FHIR R4/R5 RESTful API, ``update``).

:class:`FhirSender` PUTs each resource to ``[base]/[type]/[id]`` as ``application/fhir+json``,
one at a time in order; a client-assigned id makes the update idempotent, so a retry after a
lost answer does no harm. A network failure, 5xx and 429 (too many requests) are transient;
any other 4xx is permanent (the server will not take this resource as it is). The first
failure stops the rest: those before it are delivered, it failed, those after it were not tried.

Version-aware updates (FHIR R4 http.html "Managing Resource Contention"): an
:class:`~peers._sender.Outbound` with ``if_match`` is PUT with ``If-Match: <ETag>``, the
version the sender last wrote, and the ETag the server answers (``W/"<versionId>"``) is
recorded. A 412 Precondition Failed or 409 Conflict means the server holds another version
than the one RadDraft wrote: a :class:`FhirConflictError` (permanent, never an overwrite),
unless the server's current resource is the very one being sent (our earlier attempt's answer
was lost), which counts as delivered.

Every PUT is conditional. Without ``if_match`` (the bookkeeper knows no version of it), a
resource RadDraft alone writes (DiagnosticReport, Provenance) is created with ``If-None-Match:
*`` (conditional create: a 412 says the server already has one RadDraft did not write, unless
it is this very one); a resource other reports share (ImagingStudy, Device, Practitioner) is
read first and updated ``If-Match`` the version read, or created ``If-None-Match: *`` when the
server has none, so a change made meanwhile is a conflict, never silently overwritten.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import httpx

from peers._sender import Delivery, Outbound, PermanentDeliveryError, TransientDeliveryError
from raddraft.destinations import FhirTarget
from raddraft.settings import Settings

__all__ = ["FhirConflictError", "FhirPermanentError", "FhirSender", "FhirTransientError"]


class FhirTransientError(TransientDeliveryError):
    """No answer, 5xx or 429. ``status_code`` is the HTTP status, ``None`` without one."""

    def __init__(
        self,
        message: str,
        *,
        delivered: Sequence[str],
        failed: Sequence[str],
        status_code: int | None = None,
        responses: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, delivered=delivered, failed=failed, responses=responses)
        self.status_code = status_code


class FhirPermanentError(PermanentDeliveryError):
    """A 4xx other than 429: the server refuses the resource as it is."""

    def __init__(
        self,
        message: str,
        *,
        delivered: Sequence[str],
        failed: Sequence[str],
        status_code: int,
        responses: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, delivered=delivered, failed=failed, responses=responses)
        self.status_code = status_code


class FhirConflictError(FhirPermanentError):
    """412/409: the server's resource is not the version RadDraft last wrote; resolve by hand."""


#: Precondition Failed (If-Match did not match) and Conflict (RFC 9110 15.5.13, 15.5.10).
CONFLICT_STATUSES = frozenset({409, 412})
#: Resources only RadDraft writes, one per report or version: created conditionally.
OWN_RESOURCES = frozenset({"DiagnosticReport", "Provenance"})


def is_transient_status(status_code: int) -> bool:
    """5xx and 429 Too Many Requests may pass later; other 4xx will not."""
    return status_code >= 500 or status_code == 429


class FhirSender:
    """A FHIR server's base URL (``RADDRAFT_FHIR_SERVER_URL``)."""

    kind = "fhir"

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.destination = base_url
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    @classmethod
    def configured(cls, target: FhirTarget, settings: Settings) -> FhirSender:
        """The sender to a base URL such as ``https://fhir.example.org/r4``."""
        return cls(target.base_url)

    def send(self, payload: Sequence[Outbound]) -> Delivery:
        """PUT each resource (a JSON file) to ``[base]/[resourceType]/[id]``, in order."""
        started = time.monotonic()
        delivered: list[str] = []
        statuses: dict[str, int] = {}
        responses: dict[str, dict[str, Any]] = {}
        with httpx.Client(timeout=self.timeout) as client:
            for item in payload:
                try:
                    responses[item.identifier] = self._put(client, item)
                except FhirTransientError as error:
                    raise FhirTransientError(
                        str(error),
                        delivered=delivered,
                        failed=(item.identifier,),
                        status_code=error.status_code,
                        responses={**responses, **error.responses},
                    ) from error
                except FhirPermanentError as error:
                    kind = type(error)
                    raise kind(
                        str(error),
                        delivered=delivered,
                        failed=(item.identifier,),
                        status_code=error.status_code,
                        responses={**responses, **error.responses},
                    ) from error
                delivered.append(item.identifier)
                statuses[item.identifier] = responses[item.identifier]["http_status"]
        return Delivery(
            destination=self.destination,
            delivered=tuple(delivered),
            seconds=time.monotonic() - started,
            detail={"status_codes": statuses},
            responses=responses,
        )

    def _put(self, client: httpx.Client, item: Outbound) -> dict[str, Any]:
        """PUT one resource; its answer (HTTP status, ETag, Location) or a classified error."""
        resource = json.loads(item.path.read_text(encoding="utf-8"))
        url = f"{self.base}/{resource['resourceType']}/{resource['id']}"
        headers = {"Content-Type": "application/fhir+json"}
        try:
            headers.update(self._condition(client, url, resource["resourceType"], item))
            response = client.put(url, json=resource, headers=headers)
        except httpx.HTTPError as error:
            raise FhirTransientError(
                f"{url}: {error}",
                delivered=(),
                failed=(item.identifier,),
                responses={item.identifier: {"http_status": None, "error": str(error)}},
            ) from error
        if_match = headers.get("If-Match")
        answer = _answer(response, if_match=if_match)
        if "If-None-Match" in headers:
            answer["if_none_match"] = headers["If-None-Match"]
        code = response.status_code
        if code in CONFLICT_STATUSES:
            current = self._current_if_same(client, url, resource)
            if current is not None:
                return {**current, "http_status": code, "already_current": True}
            expected = f"If-Match {if_match}" if if_match else "If-None-Match *, none yet"
            raise FhirConflictError(
                f"{url}: HTTP {code}: version conflict, the server no longer holds the version "
                f"RadDraft last wrote ({expected}); someone else changed "
                f"{resource['resourceType']}/{resource['id']}. RadDraft does not overwrite it: "
                "compare the server's resource history with RadDraft's and resolve by hand, "
                "then retry the job",
                delivered=(),
                failed=(item.identifier,),
                status_code=code,
                responses={item.identifier: answer},
            )
        if code >= 400:
            text = f"{url}: HTTP {code} {response.text[:200]}"
            kind = FhirTransientError if is_transient_status(code) else FhirPermanentError
            raise kind(
                text,
                delivered=(),
                failed=(item.identifier,),
                status_code=code,
                responses={item.identifier: answer},
            )
        return answer

    def _condition(
        self, client: httpx.Client, url: str, kind: str, item: Outbound
    ) -> dict[str, str]:
        """The precondition of one PUT (FHIR R4 http.html "Conditional Create/Update" and
        "Managing Resource Contention"; RFC 9110 13.1.1, 13.1.2)."""
        if item.if_match:
            return {"If-Match": item.if_match}
        if kind in OWN_RESOURCES:
            return {"If-None-Match": "*"}
        response = client.get(url, headers={"Accept": "application/fhir+json"})
        if response.status_code in (404, 410):
            return {"If-None-Match": "*"}
        if response.status_code in (405, 501):
            return {}  # a server that does not read resources back: nothing to condition on
        if response.status_code == 200:
            etag = _answer(response, if_match=None).get("etag")
            # A server that versions nothing gives nothing to condition on.
            return {"If-Match": etag} if etag else {}
        if is_transient_status(response.status_code):
            raise httpx.HTTPError(f"reading the current version: HTTP {response.status_code}")
        return {}

    def _current_if_same(
        self, client: httpx.Client, url: str, resource: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The server's current answer when it already holds ``resource`` (same status and
        issued time: our own earlier PUT whose answer was lost), else ``None``."""
        try:
            response = client.get(url, headers={"Accept": "application/fhir+json"})
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        current = response.json()
        stamps = [k for k in ("issued", "recorded") if resource.get(k)]
        same = bool(stamps) and all(current.get(k) == resource.get(k) for k in ("status", *stamps))
        return _answer(response, if_match=None) if same else None


def _answer(response: httpx.Response, *, if_match: str | None) -> dict[str, Any]:
    """What the server said: status, ETag (``W/"<versionId>"``), Location."""
    answer: dict[str, Any] = {"http_status": response.status_code}
    if response.headers.get("ETag"):
        answer["etag"] = response.headers["ETag"]
    elif (version_id := _version_id(response)) is not None:
        # Servers that return the resource but no ETag still say its meta.versionId.
        answer["etag"] = f'W/"{version_id}"'
    if response.headers.get("Location"):
        answer["location"] = response.headers["Location"]
    if if_match:
        answer["if_match"] = if_match
    return answer


def _version_id(response: httpx.Response) -> str | None:
    """``meta.versionId`` of the resource a server returned, if it returned one."""
    try:
        body = response.json()
    except ValueError:
        return None
    meta = body.get("meta") if isinstance(body, dict) else None
    version_id = meta.get("versionId") if isinstance(meta, dict) else None
    return str(version_id) if version_id else None

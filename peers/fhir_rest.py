"""Report resources to a FHIR server by RESTful update (FHIR R4/R5 RESTful API, ``update``).

:class:`FhirTarget` PUTs each resource to ``[base]/[type]/[id]`` as ``application/fhir+json``,
one at a time in order; a client-assigned id makes the update idempotent, so a retry after a
lost answer does no harm. A network failure, 5xx and 429 (too many requests) are transient;
any other 4xx is permanent (the server will not take this resource as it is). The first
failure stops the rest: those before it are delivered, it failed, those after it were not tried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import httpx

from peers._target import Delivery, Outbound, PermanentDeliveryError, TransientDeliveryError
from raddraft.settings import Settings

__all__ = ["FhirPermanentError", "FhirTarget", "FhirTransientError"]


class FhirTransientError(TransientDeliveryError):
    """No answer, 5xx or 429. ``status_code`` is the HTTP status, ``None`` without one."""

    def __init__(
        self,
        message: str,
        *,
        delivered: Sequence[str],
        failed: Sequence[str],
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, delivered=delivered, failed=failed)
        self.status_code = status_code


class FhirPermanentError(PermanentDeliveryError):
    """A 4xx other than 429: the server refuses the resource as it is."""

    def __init__(
        self, message: str, *, delivered: Sequence[str], failed: Sequence[str], status_code: int
    ) -> None:
        super().__init__(message, delivered=delivered, failed=failed)
        self.status_code = status_code


def is_transient_status(status_code: int) -> bool:
    """5xx and 429 Too Many Requests may pass later; other 4xx will not."""
    return status_code >= 500 or status_code == 429


class FhirTarget:
    """A FHIR server's base URL (``RADDRAFT_FHIR_SERVER_URL``)."""

    kind = "fhir"

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.destination = base_url
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    @classmethod
    def configured(cls, destination: str, settings: Settings) -> FhirTarget:
        """The target for a base URL such as ``https://fhir.example.org/r4``."""
        return cls(destination)

    def send(self, payload: Sequence[Outbound]) -> Delivery:
        """PUT each resource (a JSON file) to ``[base]/[resourceType]/[id]``."""
        started = time.monotonic()
        delivered: list[str] = []
        statuses: dict[str, int] = {}
        with httpx.Client(timeout=self.timeout) as client:
            for item in payload:
                resource = json.loads(item.path.read_text(encoding="utf-8"))
                url = f"{self.base}/{resource['resourceType']}/{resource['id']}"
                try:
                    response = client.put(
                        url, json=resource, headers={"Content-Type": "application/fhir+json"}
                    )
                except httpx.HTTPError as error:
                    raise FhirTransientError(
                        f"{url}: {error}", delivered=delivered, failed=(item.identifier,)
                    ) from error
                code = response.status_code
                if code >= 400:
                    text = f"{url}: HTTP {code} {response.text[:200]}"
                    if is_transient_status(code):
                        raise FhirTransientError(
                            text, delivered=delivered, failed=(item.identifier,), status_code=code
                        )
                    raise FhirPermanentError(
                        text, delivered=delivered, failed=(item.identifier,), status_code=code
                    )
                delivered.append(item.identifier)
                statuses[item.identifier] = code
        return Delivery(
            destination=self.destination,
            delivered=tuple(delivered),
            seconds=time.monotonic() - started,
            detail={"status_codes": statuses},
        )

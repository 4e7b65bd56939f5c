"""Results to a DICOMweb origin server with STOW-RS (DICOM PS3.18 10.5, Store Transaction).

:class:`StowSender` posts every object of one delivery in one ``multipart/related;
type="application/dicom"`` request to ``<base URL>/studies`` and reads the response data set
(PS3.18 10.5.3): ``ReferencedSOPSequence`` lists what the server stored, ``FailedSOPSequence``
what it did not, each with a ``FailureReason``. Classification:

- transient (retry with backoff): no connection, a timeout, HTTP 5xx, 408 and 429, and a failed
  instance whose reason is 0xA7xx (out of resources, as C-STORE's PS3.4 B.2.3 refusal);
- permanent (dead letter): other 4xx (a bad request, no permission, unsupported media) and a
  failed instance with any other reason (0xA9xx does not match, 0xC000 cannot understand,
  0x0122 SOP class not supported...).

The destination is the server's DICOMweb base URL as settings write it (no credentials in
it: it is stored with every sent object); a bearer token comes from
``RADDRAFT_STOW_TOKEN``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from pydicom import Dataset

from peers._sender import Delivery, Outbound, PermanentDeliveryError, TransientDeliveryError
from raddraft.destinations import StowTarget
from raddraft.settings import Settings

__all__ = ["StowPermanentError", "StowSender", "StowTransientError"]

_RETRYABLE_HTTP = frozenset({408, 429})
_CHUNK = 1 << 20


class StowTransientError(TransientDeliveryError):
    """STOW-RS failed in a way that may succeed later (down, busy, out of resources)."""

    def __init__(
        self,
        message: str,
        *,
        delivered: Sequence[str] = (),
        failed: Sequence[str] = (),
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, delivered=delivered, failed=failed)
        self.http_status = http_status


class StowPermanentError(PermanentDeliveryError):
    """STOW-RS refused the objects for good (4xx, or a permanent FailureReason)."""

    def __init__(
        self,
        message: str,
        *,
        delivered: Sequence[str] = (),
        failed: Sequence[str] = (),
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, delivered=delivered, failed=failed)
        self.http_status = http_status


def _body(boundary: str, payload: Sequence[Outbound]) -> Iterator[bytes]:
    delimiter = f"--{boundary}".encode()
    for item in payload:
        yield delimiter + b"\r\nContent-Type: application/dicom\r\n\r\n"
        with item.path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk
        yield b"\r\n"
    yield delimiter + b"--\r\n"


def _reasons(response: httpx.Response) -> tuple[set[str], dict[str, int]]:
    """(stored SOP Instance UIDs, failed UID -> FailureReason) from the response data set."""
    try:
        answer = Dataset.from_json(response.json())
    except Exception:  # an empty or non-JSON body says nothing per instance
        return set(), {}
    stored = {
        str(item.get("ReferencedSOPInstanceUID", ""))
        for item in answer.get("ReferencedSOPSequence", [])
    }
    failed = {
        str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0x0110))
        for item in answer.get("FailedSOPSequence", [])
    }
    return stored, failed


class StowSender:
    """A DICOMweb origin server (a PACS, a cloud archive) that gets SR and GSPS by STOW-RS."""

    kind = "stow"

    def __init__(self, base_url: str, *, token: str = "", timeout: float = 60) -> None:
        StowTarget(base_url)  # raises ValueError unless an http(s) base URL
        self.destination = base_url
        self.url = base_url.rstrip("/") + "/studies"
        self.headers = {"Accept": "application/dicom+json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    @classmethod
    def configured(cls, target: StowTarget, settings: Settings) -> StowSender:
        """The sender to a base URL, with RadDraft's STOW-RS token when one is set."""
        return cls(target.base_url, token=settings.stow_token)

    def send(self, payload: Sequence[Outbound]) -> Delivery:
        """POST every payload file in one store transaction (PS3.18 10.5.1)."""
        identifiers = tuple(item.identifier for item in payload)
        boundary = f"raddraft-{uuid.uuid4().hex}"
        headers = {
            **self.headers,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        }
        started = time.monotonic()
        try:
            response = httpx.post(
                # SR and GSPS are small: one body with a length, which every server accepts
                # (not all take chunked uploads).
                self.url,
                content=b"".join(_body(boundary, payload)),
                headers=headers,
                timeout=self.timeout,
            )
        except httpx.HTTPError as error:
            raise StowTransientError(
                f"STOW-RS to {self.destination}: {error.__class__.__name__}: {error}",
                failed=identifiers,
            ) from error
        return self._delivery(response, identifiers, time.monotonic() - started)

    def _delivery(
        self, response: httpx.Response, identifiers: tuple[str, ...], seconds: float
    ) -> Delivery:
        status = response.status_code
        where = f"STOW-RS to {self.destination}: HTTP {status}"
        if status >= 500 or status in _RETRYABLE_HTTP:
            raise StowTransientError(
                f"{where} {response.text[:300]}", failed=identifiers, http_status=status
            )
        stored, failed = _reasons(response)
        if status == 200 and not failed:
            return self._ok(identifiers, seconds, status)
        if status not in (200, 202, 409):
            raise StowPermanentError(
                f"{where} {response.text[:300]}", failed=identifiers, http_status=status
            )
        delivered = [i for i in identifiers if i in stored and i not in failed]
        not_taken = [i for i in identifiers if i not in delivered]
        if not not_taken:
            return self._ok(identifiers, seconds, status)
        reasons = ", ".join(f"{uid}: 0x{code:04X}" for uid, code in failed.items())
        message = f"{where}; not stored: {reasons or 'no reason given'}"
        # Out of resources (0xA7xx) is the one reason a later try may cure.
        if failed and all(code & 0xFF00 == 0xA700 for code in failed.values()):
            raise StowTransientError(
                message, delivered=delivered, failed=not_taken, http_status=status
            )
        raise StowPermanentError(message, delivered=delivered, failed=not_taken, http_status=status)

    def _ok(self, identifiers: tuple[str, ...], seconds: float, status: int) -> Delivery:
        detail: dict[str, Any] = {"http_status": status, "url": self.url}
        return Delivery(
            destination=self.destination, delivered=identifiers, seconds=seconds, detail=detail
        )

"""Reading instances from a DICOMweb origin server: WADO-RS Retrieve Instance (PS3.18 10.4).

A GPU worker with no archive of its own reads a study's images from RadDraft's archive service
(``RADDRAFT_ARCHIVE_URL``, the web app's ``/dicomweb``) with
:func:`retrieve_instance`: one ``GET .../studies/{s}/series/{se}/instances/{i}`` with
``Accept: multipart/related; type="application/dicom"; transfer-syntax=*``, so the instance
comes back exactly as archived. Failures are typed as the export targets' are: a server
that is down or busy is transient, a refusal (401, 403, 404) permanent.
"""

from __future__ import annotations

import httpx

from peers._sender import PermanentDeliveryError, TransientDeliveryError

__all__ = ["WadoPermanentError", "WadoTransientError", "retrieve_instance"]

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class WadoTransientError(TransientDeliveryError):
    """The archive service may answer later (down, busy, a timeout)."""


class WadoPermanentError(PermanentDeliveryError):
    """The archive service refused the retrieval (no such instance, no permission)."""


def retrieve_instance(
    base_url: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    *,
    token: str = "",
    timeout: float = 60,
) -> bytes:
    """The instance's DICOM file (PS3.10) as the origin server holds it."""
    url = f"{base_url.rstrip('/')}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    headers = {"Accept": ACCEPT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as error:
        raise WadoTransientError(f"WADO-RS {url}: {error.__class__.__name__}: {error}") from error
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise WadoTransientError(f"WADO-RS {url}: HTTP {response.status_code}")
    if response.status_code != 200:
        raise WadoPermanentError(
            f"WADO-RS {url}: HTTP {response.status_code} {response.text[:200]}"
        )
    return first_part(response.headers.get("content-type", ""), response.content)


def first_part(content_type: str, body: bytes) -> bytes:
    """The first part of a multipart/related body (RFC 2387); the body itself if not one."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return body
    delimiter = b"--" + boundary.encode("latin-1")
    try:
        part = body.split(delimiter)[1]
    except IndexError as error:
        raise WadoPermanentError("WADO-RS answer has no part") from error
    _head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
    return content.removesuffix(b"\r\n")

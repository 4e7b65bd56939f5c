"""multipart/related bodies (RFC 2387) as DICOMweb carries instances, frames and bulk data.

PS3.18 8.6.1.2: each part has its own Content-Type (``application/dicom``, ``application/
octet-stream``...), the whole body names the root type in the ``type`` parameter.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

CRLF = b"\r\n"
_CHUNK = 1 << 20
MAX_BOUNDARY = 200


class MultipartError(ValueError):
    """A body that is not the multipart/related it says it is."""


@dataclass(frozen=True)
class MediaType:
    """A media type with its parameters, lower-cased names, unquoted values."""

    type: str
    params: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> MediaType:
        head, *rest = _split_params(text)
        params: dict[str, str] = {}
        for item in rest:
            name, _, value = item.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        return cls(head.strip().lower(), params)


def _split_params(text: str) -> list[str]:
    """Split on ``;`` outside quotes (a boundary may contain one when quoted)."""
    return [m.group(0) for m in re.finditer(r'(?:[^;"]|"[^"]*")+', text)]


def accepted(header: str) -> list[MediaType]:
    """The media ranges of an Accept header, in the order given (``*/*`` when empty)."""
    ranges = [part for part in re.split(r',(?=(?:[^"]*"[^"]*")*[^"]*$)', header) if part.strip()]
    return [MediaType.parse(part) for part in ranges] or [MediaType.parse("*/*")]


@dataclass(frozen=True)
class Part:
    content_type: str
    body: bytes


def check_related(content_type: str) -> MediaType:
    """The request's media type, if it is multipart/related with a usable boundary; checked
    before the body is read. RFC 2046 5.1.1 allows 1 to 70 characters, but Orthanc's STOW-RS
    client sends 73 (two UUIDs), so up to ``MAX_BOUNDARY`` are taken."""
    media = MediaType.parse(content_type)
    if media.type != "multipart/related":
        raise MultipartError(f"expected multipart/related, got {media.type or 'nothing'}")
    boundary = media.params.get("boundary")
    if not boundary:
        raise MultipartError("multipart/related without a boundary parameter")
    if len(boundary) > MAX_BOUNDARY or not boundary.isascii():
        raise MultipartError(f"the boundary parameter is not 1 to {MAX_BOUNDARY} ASCII characters")
    return media


def parse_related(content_type: str, body: bytes) -> tuple[MediaType, list[Part]]:
    """The root media type and the parts of a multipart/related ``body``.

    Each part's content is sliced out of ``body`` once (no intermediate copies), so a request
    costs about twice its size in memory while it is filed."""
    media = check_related(content_type)
    delimiter = b"--" + media.params["boundary"].encode("ascii")
    at = body.find(delimiter)
    if at < 0:
        raise MultipartError("the body does not contain its boundary")
    parts: list[Part] = []
    while True:
        after = at + len(delimiter)
        if body.startswith(b"--", after):
            break  # the close delimiter
        following = body.find(CRLF + delimiter, after)
        if following < 0:
            raise MultipartError("a part without a delimiter after it (body cut short?)")
        head_end = body.find(CRLF + CRLF, after, following + 2)
        if head_end < 0:
            raise MultipartError("a part without a blank line after its headers")
        part_type = media.params.get("type", "application/octet-stream")
        for line in body[after:head_end].split(CRLF):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-type":
                part_type = value.strip()
        parts.append(Part(part_type, body[head_end + 4 : following]))
        at = following + 2
    if not parts:
        raise MultipartError("no part between the boundaries")
    return media, parts


def new_boundary() -> str:
    return f"raddraft-{uuid.uuid4().hex}"


def related_type(root: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The Content-Type of a multipart/related response of ``root`` parts."""
    value = f'multipart/related; type="{root}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def stream_parts(boundary: str, parts: Iterable[tuple[str, bytes | Path]]) -> Iterator[bytes]:
    """The body's bytes: each part is ``(content type, bytes or a file read lazily)``."""
    delimiter = b"--" + boundary.encode("latin-1")
    for content_type, body in parts:
        yield delimiter + CRLF + f"Content-Type: {content_type}".encode() + CRLF + CRLF
        if isinstance(body, Path):
            with body.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    yield chunk
        else:
            yield body
        yield CRLF
    yield delimiter + b"--" + CRLF

"""What every outbound peer looks like to the exporter: payloads in, a delivery or an error out.

A *sender* sends to one destination of one kind (a PACS by C-STORE, a RIS by MLLP, a FHIR server
by RESTful update), the typed target of :mod:`raddraft.destinations`. It is handed
:class:`Outbound` objects, each a payload file already written once in the outbox together with
the identifier the peer knows it by (SOP Instance UID, HL7 MSH-10 control id, FHIR ``Type/id``),
and either returns a :class:`Delivery` listing what the peer took, in order, or raises a
:class:`DeliveryError` saying what was delivered before the failure, what failed, and (by its
class) whether a retry may help. Both carry ``responses``: per identifier, what the peer
answered (MLLP ACK code and control ids, DICOM status, HTTP status and ETag), for the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Delivery",
    "DeliveryError",
    "Outbound",
    "PermanentDeliveryError",
    "Sender",
    "TransientDeliveryError",
]


@dataclass(frozen=True)
class Outbound:
    """One object to send: the peer's identifier for it and its payload file in the outbox."""

    identifier: str
    path: Path
    #: The version the sender expects the peer to hold (an HTTP ETag for FHIR ``If-Match``);
    #: ``None`` sends unconditionally. Kinds without versioned resources ignore it.
    if_match: str | None = None


@dataclass(frozen=True)
class Delivery:
    """What a sender delivered: identifiers in sending order, time taken, peer warnings."""

    destination: str
    delivered: tuple[str, ...]
    seconds: float
    warnings: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: Per identifier, what the peer answered (ACK code, status, ETag...).
    responses: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, hash=False)


class DeliveryError(Exception):
    """Sending failed. ``delivered``: taken by the peer before the failure; ``failed``: tried
    and not taken. Identifiers in neither were not tried."""

    def __init__(
        self,
        message: str,
        *,
        delivered: Sequence[str] = (),
        failed: Sequence[str] = (),
        responses: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.delivered: tuple[str, ...] = tuple(delivered)
        self.failed: tuple[str, ...] = tuple(failed)
        #: Per identifier, what the peer answered before or at the failure.
        self.responses: dict[str, dict[str, Any]] = dict(responses or {})


class TransientDeliveryError(DeliveryError):
    """The peer may take it later (down, busy, timed out): retry with backoff."""


class PermanentDeliveryError(DeliveryError):
    """The peer refuses it for good (rejected, not understood): a retry fails the same way."""


@runtime_checkable
class Sender(Protocol):
    """Sends to one outbound destination of one kind (``dicom``, ``hl7``, ``fhir``, ...)."""

    @property
    def kind(self) -> str:
        """The destination kind (its target's ``kind``)."""
        ...

    @property
    def destination(self) -> str:
        """The destination as settings write it (``AET@host:port``, ``host:port``, a URL)."""
        ...

    def send(self, payload: Sequence[Outbound]) -> Delivery:
        """Send ``payload`` in order; raise :class:`TransientDeliveryError` or
        :class:`PermanentDeliveryError` (both with ``delivered`` and ``failed``)."""
        ...

"""Report messages to a RIS as HL7 v2.5.1 over MLLP (HL7 v2 Appendix C; ch. 2 control, ch. 7 ORU).

:class:`MllpSender` sends one message at a time on its own connection with
:func:`peers.mllp.send_message` and checks its acknowledgement (MSA-1 AA/CA, MSA-2 = MSH-10,
HL7 v2.5.1 ch. 2.9) before sending the next, so messages reach the RIS in order and a failure
stops the rest: those before it are delivered, it failed, those after it were not tried.
No ACK and AE/AR/CE are transient, CR and an answer that is no ACK of the message permanent.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from typing import Any

from peers._sender import Delivery, Outbound, PermanentDeliveryError, TransientDeliveryError
from peers.mllp import Ack, MLLPError, RejectedError, control_id_of, send_message
from raddraft.destinations import MllpTarget
from raddraft.settings import Settings
from raddraft.tls import mllp_tls

__all__ = ["MllpPermanentError", "MllpSender", "MllpTransientError"]


class MllpTransientError(TransientDeliveryError):
    """No ACK, or an AE/AR/CE ACK: the RIS may take the message later.

    ``ack_code`` is MSA-1 when the RIS answered with a negative ACK, else ``None``."""

    def __init__(
        self,
        error: MLLPError,
        *,
        delivered: Sequence[str],
        failed: Sequence[str],
        responses: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(str(error), delivered=delivered, failed=failed, responses=responses)
        self.ack_code: str | None = error.code if isinstance(error, RejectedError) else None


class MllpPermanentError(PermanentDeliveryError):
    """A CR ACK, or an answer that is no ACK of the message: a retry fails the same way."""

    def __init__(
        self,
        error: MLLPError,
        *,
        delivered: Sequence[str],
        failed: Sequence[str],
        responses: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(str(error), delivered=delivered, failed=failed, responses=responses)
        self.ack_code: str | None = error.code if isinstance(error, RejectedError) else None


class MllpSender:
    """An HL7 v2 MLLP listener (a RIS) at ``host:port``."""

    kind = "hl7"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.destination = f"{host}:{port}"
        self.timeout = timeout
        self.ssl_context = ssl_context

    @classmethod
    def configured(cls, target: MllpTarget, settings: Settings) -> MllpSender:
        """The sender to ``target`` (``RADDRAFT_RIS_MLLP``), over TLS when configured."""
        return cls(target.host, target.port, ssl_context=mllp_tls(settings))

    def send(self, payload: Sequence[Outbound]) -> Delivery:
        """Send each message (an ER7 file, UTF-8) and wait for its positive ACK."""
        started = time.monotonic()
        delivered: list[str] = []
        acks: dict[str, str] = {}
        responses: dict[str, dict[str, Any]] = {}
        for item in payload:
            message = item.path.read_text(encoding="utf-8")
            try:
                ack = send_message(
                    self.host,
                    self.port,
                    message,
                    timeout=self.timeout,
                    ssl_context=self.ssl_context,
                )
            except MLLPError as error:
                kind = MllpTransientError if error.transient else MllpPermanentError
                responses[item.identifier] = _refusal(error)
                raise kind(
                    error, delivered=delivered, failed=(item.identifier,), responses=responses
                ) from error
            delivered.append(item.identifier)
            acks[item.identifier] = ack.code
            responses[item.identifier] = _ack_fields(ack)
        return Delivery(
            destination=self.destination,
            delivered=tuple(delivered),
            seconds=time.monotonic() - started,
            detail={"acks": acks},
            responses=responses,
        )


def _ack_fields(ack: Ack) -> dict[str, Any]:
    """MSA-1 (acknowledgment code), MSA-2 (the control id acknowledged), MSA-3 and the ACK's
    own MSH-10 (HL7 v2.5.1 ch. 2.14.8, 2.15.9)."""
    try:
        own = control_id_of(ack.raw)
    except ValueError:
        own = ""
    return {
        "ack_code": ack.code,
        "ack_for": ack.control_id,
        "ack_text": ack.text,
        "ack_control_id": own,
    }


def _refusal(error: MLLPError) -> dict[str, Any]:
    """What the RIS answered when it did not take the message: its code, or no ACK at all."""
    if isinstance(error, RejectedError):
        return {"ack_code": error.code, "ack_for": error.control_id, "ack_text": error.text}
    return {"ack_code": None, "error": str(error)}

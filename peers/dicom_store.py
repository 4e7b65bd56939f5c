"""Results to a PACS with the Storage Service Class (DICOM PS3.4 Annex B, C-STORE PS3.7 9.1.1).

:class:`DicomStoreSender` sends every object of one delivery over one association with
:func:`peers.dicom_scu.store`, all or nothing: the first failure stops the association and the
whole set counts as failed, to be sent again on retry (an instance the peer already holds is
answered "duplicate SOP instance", which counts as stored, PS3.4 B.2.3). Transient and permanent
failures follow :func:`peers.dicom_scu.classify_status` and the A-ASSOCIATE-RJ result
(PS3.8 9.3.4).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from peers._sender import Delivery, Outbound, PermanentDeliveryError, TransientDeliveryError
from peers.dicom_scu import PermanentExportError, ScuError, TransientExportError, store
from raddraft.destinations import DicomTarget
from raddraft.settings import DicomNode, Settings
from raddraft.tls import client_tls

__all__ = ["DicomStorePermanentError", "DicomStoreSender", "DicomStoreTransientError"]


class DicomStoreTransientError(TransientDeliveryError):
    """C-STORE failed in a way that may succeed later (see :class:`TransientExportError`).

    ``status`` is the DIMSE status when the peer answered with one (PS3.7 Annex C)."""

    def __init__(self, error: ScuError, *, failed: Sequence[str]) -> None:
        super().__init__(str(error), failed=failed, responses=_status_of(failed, error.status))
        self.status: int | None = error.status


class DicomStorePermanentError(PermanentDeliveryError):
    """C-STORE failed in a way a retry will not fix (see :class:`PermanentExportError`)."""

    def __init__(self, error: ScuError, *, failed: Sequence[str]) -> None:
        super().__init__(str(error), failed=failed, responses=_status_of(failed, error.status))
        self.status: int | None = error.status


class DicomStoreSender:
    """A storage SCP (a PACS) that gets SR, GSPS and images by C-STORE."""

    kind = "dicom"

    def __init__(
        self,
        node: DicomNode,
        *,
        calling_ae: str,
        tls: ssl.SSLContext | None = None,
        timeout: float = 30,
    ) -> None:
        self.node = node
        self.destination = str(node)
        self.calling_ae = calling_ae
        self.tls = tls
        self.timeout = timeout

    @classmethod
    def configured(cls, target: DicomTarget, settings: Settings) -> DicomStoreSender:
        """The sender to ``target``, calling as RadDraft's AE title, with its TLS."""
        return cls(target.node, calling_ae=settings.ae_title, tls=client_tls(settings))

    def send(self, payload: Sequence[Outbound]) -> Delivery:
        """C-STORE every payload file over one association, in order (PS3.4 B.2)."""
        identifiers = tuple(item.identifier for item in payload)
        try:
            outcome = store(
                self.node,
                [item.path for item in payload],
                calling_ae=self.calling_ae,
                tls=self.tls,
                timeout=self.timeout,
            )
        except TransientExportError as error:
            raise DicomStoreTransientError(error, failed=identifiers) from error
        except PermanentExportError as error:
            raise DicomStorePermanentError(error, failed=identifiers) from error
        return Delivery(
            destination=self.destination,
            delivered=identifiers,
            seconds=outcome.seconds,
            warnings=tuple(
                f"{i.sop_instance_uid}: status 0x{i.status:04X} {i.error_comment}".rstrip()
                for i in outcome.warnings
            ),
            detail={
                "calling_ae": self.calling_ae,
                "statuses": [i.status for i in outcome.instances],
            },
            responses={
                i.sop_instance_uid: {"dicom_status": f"0x{i.status:04X}"} for i in outcome.instances
            },
        )


def _status_of(identifiers: Sequence[str], status: int | None) -> dict[str, dict[str, object]]:
    """The DIMSE status (PS3.7 Annex C) a failure answered, for each object it failed."""
    value = None if status is None else f"0x{status:04X}"
    return {identifier: {"dicom_status": value} for identifier in identifiers}

"""RadDraft's outbound peers: everything that connects out to a PACS, a RIS or a FHIR server.

The protocol clients:

- :mod:`peers.dicom_scu`: the DIMSE service class user, C-STORE (DICOM PS3.4 Annex B) and
  C-FIND / C-MOVE / C-GET (PS3.4 Annex C), with typed transient and permanent errors.
- :mod:`peers.dicomweb_wado`: WADO-RS retrieval of instances (PS3.18 10.4), for workers that
  read images from the archive service instead of a shared disk.
- :mod:`peers.mllp`: HL7 v2 messages over the Minimal Lower Layer Protocol (HL7 v2 Appendix C)
  with acknowledgement checking (HL7 v2.5.1 ch. 2).

And one *sender* per destination kind on top of them (:mod:`peers._sender`): an object with
``kind``, ``destination`` and ``send(payload) -> Delivery`` that raises
:class:`TransientDeliveryError` or :class:`PermanentDeliveryError`. :data:`SENDERS` is the one
registry from a typed target (:mod:`raddraft.destinations`) to its sender:

- :class:`~raddraft.destinations.DicomTarget`: :class:`~peers.dicom_store.DicomStoreSender`,
  C-STORE over one association.
- :class:`~raddraft.destinations.MllpTarget`: :class:`~peers.hl7_mllp.MllpSender`, HL7 messages
  over MLLP, ACK checked.
- :class:`~raddraft.destinations.FhirTarget`: :class:`~peers.fhir_rest.FhirSender`, FHIR RESTful
  update (PUT), ``If-Match`` when the caller names the version it expects.
- :class:`~raddraft.destinations.StowTarget`: :class:`~peers.dicomweb_stow.StowSender`, DICOMweb
  STOW-RS (PS3.18 10.5).
- :class:`~raddraft.destinations.SmtpTarget`: :class:`~peers.smtp.SmtpSender`, critical-finding
  notices by e-mail.

:func:`sender_for` picks one by the target's type. A new destination kind is one target
dataclass in :mod:`raddraft.destinations`, one module with its sender, one line in
:data:`SENDERS`.

This package depends on :mod:`raddraft.settings` and third-party libraries only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peers._sender import (
    Delivery,
    DeliveryError,
    Outbound,
    PermanentDeliveryError,
    Sender,
    TransientDeliveryError,
)
from peers.dicom_store import DicomStorePermanentError, DicomStoreSender, DicomStoreTransientError
from peers.dicomweb_stow import (
    StowPermanentError,
    StowSender,
    StowTransientError,
)
from peers.dicomweb_wado import WadoPermanentError, WadoTransientError, retrieve_instance
from peers.fhir_rest import (
    FhirConflictError,
    FhirPermanentError,
    FhirSender,
    FhirTransientError,
)
from peers.hl7_mllp import MllpPermanentError, MllpSender, MllpTransientError
from peers.smtp import SmtpPermanentError, SmtpSender, SmtpTransientError
from raddraft.destinations import (
    DicomTarget,
    FhirTarget,
    MllpTarget,
    SmtpTarget,
    StowTarget,
    Target,
)
from raddraft.settings import Settings

__all__ = [
    "SENDERS",
    "Delivery",
    "DeliveryError",
    "DicomStorePermanentError",
    "DicomStoreSender",
    "DicomStoreTransientError",
    "FhirConflictError",
    "FhirPermanentError",
    "FhirSender",
    "FhirTransientError",
    "MllpPermanentError",
    "MllpSender",
    "MllpTransientError",
    "Outbound",
    "PermanentDeliveryError",
    "Sender",
    "SenderFactory",
    "SmtpPermanentError",
    "SmtpSender",
    "SmtpTransientError",
    "StowPermanentError",
    "StowSender",
    "StowTransientError",
    "TransientDeliveryError",
    "WadoPermanentError",
    "WadoTransientError",
    "retrieve_instance",
    "sender_for",
]

#: Builds the sender to a target (one of :data:`raddraft.destinations.Target`) from settings.
SenderFactory = Callable[[Any, Settings], Sender]

#: Target type -> its sender's factory: the one place a destination kind meets its protocol.
SENDERS: dict[type[Target], SenderFactory] = {
    DicomTarget: DicomStoreSender.configured,
    MllpTarget: MllpSender.configured,
    FhirTarget: FhirSender.configured,
    StowTarget: StowSender.configured,
    SmtpTarget: SmtpSender.configured,
}


def sender_for(target: Target, settings: Settings) -> Sender:
    """The sender to ``target``; :class:`ValueError` for a target type with no sender."""
    factory = SENDERS.get(type(target))
    if factory is None:
        raise ValueError(f"no sender for {type(target).__name__}")
    return factory(target, settings)

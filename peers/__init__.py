"""RadDraft's outbound peers: everything that connects out to a PACS, a RIS or a FHIR server.

The protocol clients:

- :mod:`peers.dicom_scu`: the DIMSE service class user, C-STORE (DICOM PS3.4 Annex B) and
  C-FIND / C-MOVE / C-GET (PS3.4 Annex C), with typed transient and permanent errors.
- :mod:`peers.dicomweb_wado`: WADO-RS retrieval of instances (PS3.18 10.4), for workers that
  read images from the archive service instead of a shared disk.
- :mod:`peers.mllp`: HL7 v2 messages over the Minimal Lower Layer Protocol (HL7 v2 Appendix C)
  with acknowledgement checking (HL7 v2.5.1 ch. 2).

And one *target* per destination kind on top of them (:mod:`peers._target`): an object with
``kind``, ``destination`` and ``send(payload) -> Delivery`` that raises
:class:`TransientDeliveryError` or :class:`PermanentDeliveryError`:

- ``dicom``: :class:`~peers.dicom_store.DicomStoreTarget`, C-STORE over one association.
- ``hl7``: :class:`~peers.hl7_mllp.MllpTarget`, ORU messages over MLLP, ACK checked.
- ``fhir``: :class:`~peers.fhir_rest.FhirTarget`, FHIR RESTful update (PUT), ``If-Match``
  when the sender names the version it expects.
- ``stow``: :class:`~peers.dicomweb_stow.StowTarget`, DICOMweb STOW-RS (PS3.18 10.5).
- ``smtp``: :class:`~peers.smtp.SmtpTarget`, critical-finding notices by e-mail.

:func:`target_for` picks one by kind. A new destination kind (say DICOMweb STOW-RS) is one
module with its target class plus one line in :data:`TARGETS`.

This package depends on :mod:`raddraft.settings` and third-party libraries only.
"""

from __future__ import annotations

from collections.abc import Callable

from peers._target import (
    Delivery,
    DeliveryError,
    Outbound,
    PermanentDeliveryError,
    Target,
    TransientDeliveryError,
)
from peers.dicom_store import DicomStorePermanentError, DicomStoreTarget, DicomStoreTransientError
from peers.dicomweb_stow import (
    StowPermanentError,
    StowTarget,
    StowTransientError,
    is_stow_destination,
)
from peers.dicomweb_wado import WadoPermanentError, WadoTransientError, retrieve_instance
from peers.fhir_rest import (
    FhirConflictError,
    FhirPermanentError,
    FhirTarget,
    FhirTransientError,
)
from peers.hl7_mllp import MllpPermanentError, MllpTarget, MllpTransientError
from peers.smtp import SmtpPermanentError, SmtpTarget, SmtpTransientError
from raddraft.settings import Settings

__all__ = [
    "TARGETS",
    "Delivery",
    "DeliveryError",
    "DicomStorePermanentError",
    "DicomStoreTarget",
    "DicomStoreTransientError",
    "FhirConflictError",
    "FhirPermanentError",
    "FhirTarget",
    "FhirTransientError",
    "MllpPermanentError",
    "MllpTarget",
    "MllpTransientError",
    "Outbound",
    "PermanentDeliveryError",
    "SmtpPermanentError",
    "SmtpTarget",
    "SmtpTransientError",
    "StowPermanentError",
    "StowTarget",
    "StowTransientError",
    "Target",
    "TargetFactory",
    "TransientDeliveryError",
    "WadoPermanentError",
    "WadoTransientError",
    "is_stow_destination",
    "retrieve_instance",
    "target_for",
]

#: Builds a target from its destination (as settings write it) and the settings.
TargetFactory = Callable[[str, Settings], Target]

#: Destination kind -> its target's factory.
TARGETS: dict[str, TargetFactory] = {
    DicomStoreTarget.kind: DicomStoreTarget.configured,
    MllpTarget.kind: MllpTarget.configured,
    FhirTarget.kind: FhirTarget.configured,
    StowTarget.kind: StowTarget.configured,
    SmtpTarget.kind: SmtpTarget.configured,
}


def target_for(kind: str, destination: str, settings: Settings) -> Target:
    """The target of ``kind`` (``dicom``, ``hl7``, ``fhir``, ``stow``) for ``destination``.

    Raises :class:`ValueError` for an unknown kind or a destination the kind cannot parse.
    """
    factory = TARGETS.get(kind)
    if factory is None:
        known = ", ".join(sorted(TARGETS))
        raise ValueError(f"unknown destination kind {kind!r} (known: {known})")
    return factory(destination, settings)

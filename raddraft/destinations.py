"""Where results go, typed once: one frozen dataclass per destination kind.

Settings write destinations as text (``AET@host:port``, ``host:port``, a URL) and job rows keep
that text (``ExportDicom.destination``, ``sent_objects.destination``), but nothing re-reads it
by hand: it is parsed here, once, into a :data:`Target`, and :mod:`peers` resolves each target
type to its sender in one registry (``peers.SENDERS``). A target's ``kind`` names its release
policy group and audit label, ``carries`` the sent-object kinds it takes, and ``str(target)``
is the serialised form job rows hold (the text the settings wrote).

Pure: no database, no network; the bottom layer, so the bookkeeper, the worker and the peers
may all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from raddraft.settings import DicomNode, Settings

__all__ = [
    "DicomTarget",
    "ExportTarget",
    "FhirTarget",
    "MllpTarget",
    "SmtpTarget",
    "StowTarget",
    "Target",
    "export_target",
    "export_targets",
    "fhir_target",
    "notice_target",
    "ris_target",
]

#: The DICOM objects RadDraft sends to an archive: SR, GSPS and the IOCM rejection note (KOS).
DICOM_OBJECTS: tuple[str, ...] = ("sr", "gsps", "kos")


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{text!r} is not of the form host:port")
    return host, int(port)


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


@dataclass(frozen=True)
class DicomTarget:
    """A storage SCP (a PACS) reached by C-STORE (PS3.4 Annex B), ``AET@host:port``."""

    kind: ClassVar[str] = "dicom"
    carries: ClassVar[tuple[str, ...]] = DICOM_OBJECTS

    node: DicomNode

    @classmethod
    def parse(cls, text: str) -> DicomTarget:
        return cls(DicomNode.parse(text))

    def __str__(self) -> str:
        return str(self.node)


@dataclass(frozen=True)
class StowTarget:
    """A DICOMweb origin server reached by STOW-RS (PS3.18 10.5), its http(s) base URL."""

    kind: ClassVar[str] = "stow"
    carries: ClassVar[tuple[str, ...]] = DICOM_OBJECTS

    base_url: str

    def __post_init__(self) -> None:
        if not _is_url(self.base_url):
            raise ValueError(f"{self.base_url!r} is not an http(s) DICOMweb base URL")

    def __str__(self) -> str:
        return self.base_url


@dataclass(frozen=True)
class MllpTarget:
    """An HL7 v2 MLLP listener (HL7 v2.5.1 IG appendix C), ``host:port``: the RIS, or the
    critical-results receiver."""

    kind: ClassVar[str] = "hl7"
    carries: ClassVar[tuple[str, ...]] = ("hl7",)

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> MllpTarget:
        return cls(*_host_port(text))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FhirTarget:
    """A FHIR server's base URL (FHIR R4 RESTful API, 3.1.0), updated with PUT."""

    kind: ClassVar[str] = "fhir"
    carries: ClassVar[tuple[str, ...]] = ("fhir",)

    base_url: str

    def __str__(self) -> str:
        return self.base_url


@dataclass(frozen=True)
class SmtpTarget:
    """An SMTP relay (RFC 5321), ``host:port``, for critical-finding notices."""

    kind: ClassVar[str] = "smtp"
    carries: ClassVar[tuple[str, ...]] = ()

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> SmtpTarget:
        return cls(*_host_port(text))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


Target = DicomTarget | StowTarget | MllpTarget | FhirTarget | SmtpTarget
#: Where SR, GSPS and KOS go: a PACS by C-STORE or a DICOMweb server by STOW-RS.
ExportTarget = DicomTarget | StowTarget


def export_target(text: str) -> ExportTarget:
    """An export destination as a job row holds it: a URL is STOW-RS, else ``AET@host:port``."""
    return StowTarget(text) if _is_url(text) else DicomTarget.parse(text)


def export_targets(settings: Settings) -> tuple[ExportTarget, ...]:
    """Every configured archive: ``RADDRAFT_DESTINATIONS`` then ``RADDRAFT_STOW_DESTINATIONS``."""
    return (
        *(DicomTarget(node) for node in settings.destinations),
        *(StowTarget(url) for url in settings.stow_destinations),
    )


def ris_target(settings: Settings) -> MllpTarget | None:
    """The RIS (``RADDRAFT_RIS_MLLP``), or None when unset; :class:`ValueError` if malformed."""
    return MllpTarget.parse(settings.ris_mllp) if settings.ris_mllp else None


def fhir_target(settings: Settings) -> FhirTarget | None:
    """The FHIR server (``RADDRAFT_FHIR_SERVER_URL``), or None when unset."""
    return FhirTarget(settings.fhir_server_url) if settings.fhir_server_url else None


def notice_target(channel: str, text: str) -> MllpTarget | SmtpTarget:
    """A critical notice's destination as its row holds it, by the notice's channel
    (``hl7``: MLLP ``host:port``; ``email``: the SMTP relay's ``host:port``)."""
    if channel == "hl7":
        return MllpTarget.parse(text)
    if channel == "email":
        return SmtpTarget.parse(text)
    raise ValueError(f"unknown notice channel {channel!r}")

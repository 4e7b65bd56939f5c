"""TLS for RadDraft's outbound connections: PS3.15 B.9's BCP 195 profile (:mod:`raddraft.tls`)."""

from __future__ import annotations

import ssl

from raddraft.settings import Settings
from raddraft.tls import client_context

__all__ = ["client_tls", "mllp_tls"]


def client_tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS for our associations, with our certificate, when RadDraft's TLS is configured."""
    if not (settings.tls_cert and settings.tls_key):
        return None
    return client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)


def mllp_tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS for MLLP to the RIS when ``RADDRAFT_RIS_MLLP_TLS`` is on: the RIS's certificate is
    checked against ``RADDRAFT_TLS_CA`` (else the system's CAs); ours is presented if set."""
    if not settings.ris_mllp_tls:
        return None
    return client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)

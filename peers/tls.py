"""TLS for RadDraft's outbound connections (PS3.15 B.1 secure transport connection profile)."""

from __future__ import annotations

import ssl

from raddraft.settings import Settings

__all__ = ["client_tls"]


def client_tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS for our associations, with our certificate, when RadDraft's TLS is configured."""
    if not (settings.tls_cert and settings.tls_key):
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.tls_ca) if settings.tls_ca else None
    )
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context

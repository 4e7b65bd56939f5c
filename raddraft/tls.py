"""TLS contexts for every RadDraft connection, per DICOM PS3.15 B.9 (the BCP 195 profile).

PS3.15 B.9 ("BCP195 RFC 8996, 9325 TLS Secure Transport Connection Profile"): TLS 1.2 at least
(RFC 8996 retires 1.0 and 1.1), TLS 1.3 negotiated whenever both ends have it, and for TLS 1.2
only the RFC 9325 4.2 cipher suites: ECDHE or DHE key exchange with AES-GCM (forward secrecy,
AEAD); the ECDSA variants are listed beside the RSA ones for EC certificates. TLS 1.3's own
suites are all AEAD and stay as OpenSSL sets them. Compression and renegotiation are off
(RFC 9325 3.3, 3.5). With a CA the peer must present a certificate it signed (mutual TLS).

The DICOM listener, the orders server, the outbound DIMSE and MLLP clients, the ATNA syslog
sender and the web app all take their contexts from here, so the profile is set in one place;
:func:`client_tls` and :func:`mllp_tls` read which certificates from the settings.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from raddraft.settings import Settings

__all__ = ["BCP195_CIPHERS", "client_context", "client_tls", "mllp_tls", "server_context"]

BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)


def _profile(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """A server context; client certificates are required when ``ca`` is given."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context checking the server against ``ca`` (else the system's CAs), presenting
    ``cert``/``key`` when given."""
    context = _profile(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def client_tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS for our DICOM associations, with our certificate, when RadDraft's TLS is configured."""
    if not (settings.tls_cert and settings.tls_key):
        return None
    return client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)


def mllp_tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS for MLLP to the RIS when ``RADDRAFT_RIS_MLLP_TLS`` is on: the RIS's certificate is
    checked against ``RADDRAFT_TLS_CA`` (else the system's CAs); ours is presented if set."""
    if not settings.ris_mllp_tls:
        return None
    return client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)

"""The dispatcher of results: DICOM SR/GSPS to PACS, HL7 v2 ORU to the RIS, FHIR to a server.

Each task sends what the lifecycle built and left in the outbox for one report version (never
rebuilding it: a retry sends the very bytes built at drafting or sign-off) and records each
attempt. Failures are classified so the job runner retries a peer that is down and dead-letters
one that refuses us for good.
"""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from typing import Any

import httpx

from peers import mllp
from peers.dicom_scu import PermanentExportError, TransientExportError, store
from raddraft.db import session_scope
from raddraft.logging import kv
from raddraft.settings import DicomNode, Settings, get_settings
from report_drafts import lifecycle, publish
from worker.errors import PermanentError, TransientError

log = logging.getLogger(__name__)


def client_tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS for our associations, with our certificate, when RadDraft's TLS is configured."""
    if not (settings.tls_cert and settings.tls_key):
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.tls_ca) if settings.tls_ca else None
    )
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


def _pending(
    version_pk: int, kinds: tuple[str, ...], destination: str | None = None
) -> list[tuple[int, str, Path]]:
    settings = get_settings()
    with session_scope() as session:
        rows = lifecycle.pending_sends(session, version_pk, kinds=kinds, destination=destination)
        return [(row.id, row.identifier, publish.outbox_file(settings, row)) for row in rows]


def _record(sent: list[int], *, ok: bool, error: str | None = None) -> None:
    with session_scope() as session:
        for sent_pk in sent:
            lifecycle.record_sent(session, sent_pk, ok=ok, error=error)


def export_dicom_job(job_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """C-STORE the version's SR and GSPS objects to one destination (PS3.4 Annex B)."""
    settings = get_settings()
    destination = str(args["destination"])
    items = _pending(int(args["report_version_pk"]), ("sr", "gsps"), destination)
    if not items:
        return {"sent": 0}
    pks = [pk for pk, _, _ in items]
    try:
        outcome = store(
            DicomNode.parse(destination),
            [path for _, _, path in items],
            calling_ae=settings.ae_title,
            tls=client_tls(settings),
        )
    except TransientExportError as error:
        _record(pks, ok=False, error=str(error))
        raise TransientError(str(error)) from error
    except PermanentExportError as error:
        _record(pks, ok=False, error=str(error))
        raise PermanentError(str(error)) from error
    _record(pks, ok=True)
    log.info(
        "exported %s", kv(destination=destination, objects=len(pks), warnings=len(outcome.warnings))
    )
    return {"sent": len(pks), "export_s": round(outcome.seconds, 4)}


def send_hl7_job(job_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """Send the version's ORU^R01 over MLLP and check the ACK (HL7 v2.5.1 ch. 7)."""
    settings = get_settings()
    if not settings.ris_mllp:
        raise PermanentError("RADDRAFT_RIS_MLLP is not set")
    host, _, port = settings.ris_mllp.rpartition(":")
    sent = 0
    for pk, control_id, path in _pending(int(args["report_version_pk"]), ("hl7",)):
        try:
            mllp.send_message(host, int(port), path.read_text(encoding="utf-8"))
        except mllp.MLLPError as error:
            _record([pk], ok=False, error=str(error))
            raise (TransientError if error.transient else PermanentError)(str(error)) from error
        _record([pk], ok=True)
        sent += 1
        log.info("HL7 sent %s", kv(control_id=control_id, ris=settings.ris_mllp))
    return {"sent": sent}


def push_fhir_job(job_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """PUT the version's FHIR resources to the configured server (FHIR RESTful update)."""
    settings = get_settings()
    if not settings.fhir_server_url:
        raise PermanentError("RADDRAFT_FHIR_SERVER_URL is not set")
    base = settings.fhir_server_url.rstrip("/")
    sent = 0
    with httpx.Client(timeout=30) as client:
        for pk, _, path in _pending(int(args["report_version_pk"]), ("fhir",)):
            resource = json.loads(path.read_text(encoding="utf-8"))
            url = f"{base}/{resource['resourceType']}/{resource['id']}"
            try:
                response = client.put(
                    url, json=resource, headers={"Content-Type": "application/fhir+json"}
                )
            except httpx.HTTPError as error:
                _record([pk], ok=False, error=str(error))
                raise TransientError(f"{url}: {error}") from error
            if response.status_code >= 400:
                error_text = f"{url}: HTTP {response.status_code} {response.text[:200]}"
                _record([pk], ok=False, error=error_text)
                transient = response.status_code >= 500 or response.status_code == 429
                raise (TransientError if transient else PermanentError)(error_text)
            _record([pk], ok=True)
            sent += 1
    return {"sent": sent}

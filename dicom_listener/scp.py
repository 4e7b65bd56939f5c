"""The DICOM listener: Verification and Storage SCP (PS3.4 Annex A and B) on pynetdicom 3.

Event handlers are small functions named after the DIMSE service they answer; the association
policy (who may connect, TLS, how many at once) lives in :func:`build_ae` and
:class:`ListenerServer`; :class:`Listener` ties them to the completion timer and a clean stop.

Performance (10 MB radiographs): pynetdicom's defaults buffer each data set in memory, copy it
into a file, and read the socket 4 KiB at a time. Here the data set streams into a spool file in
``archive/.tmp`` fragment by fragment (``STORE_RECV_CHUNKED_DATASET`` with our own spool, which
starts disk write-back while receiving), the socket is read with ``recv_into`` in one go per PDU,
and the C-STORE handler parses only the header. The maximum PDU size comes from settings.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    evt,
)
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.engine import Engine

from dicom_listener import _tuning
from dicom_listener.archive import Spool
from dicom_listener.completion import CompletionTimer, complete_pushed
from dicom_listener.ingest import Ingester, IngestResult, Origin, Outcome, Status
from dicom_listener.tables import IngestEvent, IngestEventKind
from raddraft import atna
from raddraft.db import engine_for, session_scope
from raddraft.logging import kv
from raddraft.settings import Settings
from raddraft.tls import server_context

log = logging.getLogger(__name__)

# A calling AE title can be at most 16 characters (PS3.8 9.3.2), so this never matches one:
# pynetdicom treats an empty require_calling_aet list as "anyone", and an empty allow-list
# here means "nobody".
_NOBODY = "<no caller is allowed>"


# -- event handlers ----------------------------------------------------------------------------


def _origin(event: Event) -> Origin:
    requestor = event.assoc.requestor
    return Origin(
        calling_ae_title=str(requestor.ae_title).strip(),
        peer=f"{requestor.address}:{requestor.port}",
    )


def handle_echo(event: Event, ingester: Ingester) -> int:
    """C-ECHO (Verification Service Class, PS3.4 A.4): always success once associated."""
    origin = _origin(event)
    log.info("C-ECHO %s", kv(calling=origin.calling_ae_title, peer=origin.peer))
    return int(Status.success)


def handle_store(event: Event, ingester: Ingester) -> int:
    """C-STORE (Storage Service Class SCP, PS3.4 B.2.2): file the data set, then answer.

    The status goes back only after the instance is durable on disk and recorded (see
    :mod:`dicom_listener.ingest`): 0x0000 success, 0xA700 out of resources (the sender retries),
    0xA900 data set does not match (identifiers missing) or 0xC000 cannot understand.
    """
    request: Any = event.request
    origin = Origin(
        calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
        peer=f"{event.assoc.requestor.address}:{event.assoc.requestor.port}",
        affected_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
        affected_sop_class_uid=str(request.AffectedSOPClassUID or ""),
    )
    spool_file = getattr(request, "_dataset_file", None)
    failed = getattr(spool_file, "error", None)
    if spool_file is not None and failed is not None:
        Path(spool_file.name).unlink(missing_ok=True)
        why = f"writing the received data set failed: {failed}"
        return int(ingester.refuse(origin, why, int(getattr(spool_file, "size", 0))).status)
    try:
        spool = _spooled_path(event, ingester)
    except OSError as error:
        return int(ingester.refuse(origin, f"spooling the data set failed: {error}", 0).status)
    result: IngestResult = ingester.ingest_spool(spool, origin)
    if result.status == Status.success and result.study_instance_uid:
        _pushed_studies(event).add(result.study_instance_uid)
        if result.outcome == Outcome.stored:
            _count_transferred(event, result)
    return int(result.status)


def _count_transferred(event: Event, result: IngestResult) -> None:
    """Tally stored instances per patient, study and SOP class for the ATNA record at close."""
    tally: dict[str, dict[str, dict[str, int]]] | None = getattr(
        event.assoc, "raddraft_transferred", None
    )
    if tally is None:
        tally = {}
        event.assoc.raddraft_transferred = tally  # type: ignore[attr-defined]
    classes = tally.setdefault(result.patient_id, {}).setdefault(result.study_instance_uid, {})
    classes[result.sop_class_uid] = classes.get(result.sop_class_uid, 0) + 1


def _audit_transferred(event: Event) -> None:
    """One DICOM Instances Transferred record per patient (PS3.15 A.5.3.4) when the
    association ends, as IHE ATNA expects per transfer rather than per instance."""
    tally = getattr(event.assoc, "raddraft_transferred", None)
    if not tally:
        return
    event.assoc.raddraft_transferred = {}  # type: ignore[attr-defined]
    origin = _origin(event)
    for patient_id, studies in tally.items():
        atna.emit(
            atna.instances_transferred(
                source_aet=origin.calling_ae_title,
                source_address=origin.peer.rsplit(":", 1)[0],
                patient_id=patient_id,
                studies=studies,
            )
        )


def _pushed_studies(event: Event) -> set[str]:
    """The studies this association has stored into, kept on the association object."""
    studies: set[str] | None = getattr(event.assoc, "raddraft_studies", None)
    if studies is None:
        studies = set()
        event.assoc.raddraft_studies = studies  # type: ignore[attr-defined]
    return studies


def handle_released(event: Event, ingester: Ingester) -> None:
    """A-RELEASE (PS3.8 7.2): the push is over; complete its two-view studies at once."""
    studies = getattr(event.assoc, "raddraft_studies", None)
    if not studies:
        return
    try:
        complete_pushed(ingester.engine, studies)
    except Exception:
        # The completion timer covers these studies too; a failure here only costs latency.
        log.exception("completion at release failed %s", kv(studies=len(studies)))


def _spooled_path(event: Event, ingester: Ingester) -> Path:
    """The received data set as a complete DICOM file in our ``archive/.tmp``.

    In streaming mode pynetdicom already wrote it there (file meta first, then the bytes as
    received); otherwise, or if the spool landed elsewhere, the encoded bytes are written now.
    """
    spool_file = getattr(event.request, "_dataset_file", None)
    if spool_file is not None:
        path = Path(spool_file.name)
        if path.parent == ingester.archive.tmp:
            return path
        with ingester.archive.new_spool() as copy, path.open("rb") as source:
            while chunk := source.read(1 << 20):
                copy.write(chunk)
        return copy.path
    return ingester.archive.spool_bytes(event.encoded_dataset(include_meta=True))


def handle_rejected(event: Event, ingester: Ingester) -> None:
    """A-ASSOCIATE-RJ sent (PS3.8 7.1.1.9): say who and why in the log and the event table.

    pynetdicom rejects for two reasons here: a calling AE title not on the allow-list
    (permanent, "calling AE title not recognized") or the association limit (transient).
    """
    origin = _origin(event)
    settings = ingester.settings
    if not settings.any_caller and origin.calling_ae_title not in settings.allowed_callers:
        why = "calling AE title not allowed"
    else:
        why = f"association limit reached (max {settings.max_associations})"
    log.warning(
        "association rejected %s",
        kv(
            calling=origin.calling_ae_title,
            peer=origin.peer,
            why=why,
            allowed=",".join(settings.allowed_callers) or "(none)",
        ),
    )
    _record_event(ingester.engine, IngestEventKind.association_rejected, origin, why)
    if atna.enabled(settings):
        alert = atna.security_alert(peer=origin.peer, calling_aet=origin.calling_ae_title, why=why)
        atna.emit(alert)


def handle_closed(event: Event, ingester: Ingester) -> None:
    """The connection closed (released, aborted or dropped, PS3.8 7.3/7.4): a data set still
    being received is never answered, so its spool in ``archive/.tmp`` is removed now rather
    than at the next start (bench/fuzz.py: aborted C-STOREs otherwise fill the disk)."""
    if atna.enabled(ingester.settings):
        _audit_transferred(event)
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    spool = getattr(message, "_data_set_file", None)
    if isinstance(spool, Spool) and not spool.closed:
        spool.close()
        Path(spool.name).unlink(missing_ok=True)
        log.warning(
            "partial data set removed, connection closed mid-transfer %s",
            kv(peer=_origin(event).peer, bytes=spool.size),
        )


def handle_accepted(event: Event, ingester: Ingester) -> None:
    origin = _origin(event)
    log.info("association accepted %s", kv(calling=origin.calling_ae_title, peer=origin.peer))
    _record_event(ingester.engine, IngestEventKind.association_accepted, origin, "")


def _record_event(engine: Engine, kind: IngestEventKind, origin: Origin, why: str) -> None:
    try:
        with session_scope(engine) as session:
            session.add(
                IngestEvent(
                    kind=kind.value,
                    calling_ae_title=origin.calling_ae_title[:16],
                    peer=origin.peer[:64],
                    detail={"why": why},
                )
            )
    except Exception:
        log.warning("could not record %s event", kind.value, exc_info=True)


# -- the application entity and its server ----------------------------------------------------


def build_ae(settings: Settings) -> AE:
    """An AE that accepts Verification and every storage SOP class in all transfer syntaxes.

    Every syntax pynetdicom knows is offered (implicit/explicit VR little endian, deflated,
    explicit big endian, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE, ...): the
    data set is stored as received, never transcoded, so supporting one costs nothing.
    """
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout_seconds
    ae.acse_timeout = settings.acse_timeout_seconds
    ae.dimse_timeout = settings.dimse_timeout_seconds
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    if settings.any_caller:
        ae.require_calling_aet = []
    elif settings.allowed_callers:
        ae.require_calling_aet = [title for title in settings.allowed_callers if title]
    else:
        ae._require_calling_aet = [_NOBODY]  # bypasses the setter's AE title validation
    return ae


def build_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS server context per PS3.15 B.9 (BCP 195, :mod:`raddraft.tls`); client certificates
    are required when a CA is configured."""
    if not (settings.tls_cert and settings.tls_key):
        return None
    if not settings.tls_ca:
        log.warning("TLS without RADDRAFT_TLS_CA: client certificates are not checked")
    return server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server plus a host allow-list and a bounded TLS handshake."""

    allowed_hosts: frozenset[str] = frozenset()
    handshake_timeout: float = 10.0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Hosts are checked at TCP accept: a host not on the list gets no association at all."""
        if not self.allowed_hosts or "*" in self.allowed_hosts:
            return True
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if host in self.allowed_hosts:
            return True
        log.warning("connection refused, host not allowed %s", kv(peer=host))
        return False

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept, then run the TLS handshake with a deadline so a silent peer cannot stall
        the accept loop; a failed handshake (no or untrusted client certificate) is logged."""
        assert self.socket is not None
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # An accepted socket blocks forever by default: a peer that stops mid-PDU would hold
        # its thread and association slot for good. network_timeout bounds every read.
        read_timeout = self.ae.network_timeout
        if self.ssl_context:
            client.settimeout(self.handshake_timeout)
            try:
                client = self.ssl_context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError) as error:
                peer = f"{address[0]}:{address[1]}"
                log.warning(
                    "TLS handshake failed, connection closed %s", kv(peer=peer, why=str(error))
                )
                if atna.enabled():
                    why = f"TLS handshake failed: {error}"
                    atna.emit(atna.security_alert(peer=peer, calling_aet="", why=why))
                client.close()
                raise
        client.settimeout(read_timeout)
        return client, address


class Listener:
    """The running listener: server thread, completion timer, stop on request."""

    def __init__(self, settings: Settings, *, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or engine_for(settings.database_url)
        self.ingester = Ingester(settings, self.engine)
        self.ae = build_ae(settings)
        self.server: ListenerServer | None = None
        self.timer = CompletionTimer(self.engine, settings)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self, port: int | None = None, host: str | None = None) -> Listener:
        """Bind and serve in background threads; returns once connections are accepted."""
        removed = self.ingester.archive.prepare()
        _tuning.apply(
            self.ingester.archive.tmp,
            max_dataset_bytes=self.ingester.limits.max_dataset_bytes,
            max_pdu_read=max(self.settings.max_received_pdu_bytes, self.settings.max_pdu_size),
        )
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, handle_echo, [self.ingester]),
            (evt.EVT_C_STORE, handle_store, [self.ingester]),
            (evt.EVT_REJECTED, handle_rejected, [self.ingester]),
            (evt.EVT_ACCEPTED, handle_accepted, [self.ingester]),
            (evt.EVT_RELEASED, handle_released, [self.ingester]),
            (evt.EVT_CONN_CLOSE, handle_closed, [self.ingester]),
        ]
        address = (
            host or self.settings.dicom_host,
            self.settings.dicom_port if port is None else port,
        )
        server = self.ae.make_server(
            address,
            ssl_context=build_ssl_context(self.settings),
            evt_handlers=handlers,
            server_class=ListenerServer,
        )
        assert isinstance(server, ListenerServer)
        server.allowed_hosts = frozenset(self.settings.allowed_hosts)
        server.daemon_threads = True
        self.server = server
        self.ae._servers.append(server)
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="raddraft-scp"
        )
        self._thread.daemon = True
        self._thread.start()
        self.timer.start()
        if not self.settings.allowed_callers:
            log.warning(
                "no calling AE title is allowed: set RADDRAFT_ALLOWED_CALLERS (or '*' for any)"
            )
        log.info(
            "listening %s",
            kv(
                ae=self.settings.ae_title,
                host=address[0],
                port=self.port,
                tls=server.ssl_context is not None,
                callers=",".join(self.settings.allowed_callers) or "(none)",
                max_pdu=self.settings.max_pdu_size,
                max_associations=self.settings.max_associations,
                streaming=_config.STORE_RECV_CHUNKED_DATASET,
                tmp_removed=removed,
                pid=os.getpid(),
            ),
        )
        return self

    def stop(self) -> None:
        """Stop accepting, abort open associations (their unacknowledged instances are simply
        not answered; senders retry them), stop the timer."""
        self.timer.stop()
        if self.server is not None:
            self.ae.shutdown()
            self.server = None
        if self._thread is not None:
            self._thread.join(10)
        log.info("listener stopped")

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

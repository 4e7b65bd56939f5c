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

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
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
    """C-ECHO (Verification Service Class, PS3.4 A.4): always success once associated.

    Recorded as an ``echo`` ingest event, as an accepted association is, so ``/metrics`` counts
    the verifications a sender makes (a failed write is logged, the echo still succeeds)."""
    origin = _origin(event)
    log.info("C-ECHO %s", kv(calling=origin.calling_ae_title, peer=origin.peer))
    _record_event(ingester.engine, IngestEventKind.echo, origin, "")
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
        context_sop_class_uid=str(getattr(event.context, "abstract_syntax", "") or ""),
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
    path = event.dataset_path  # pynetdicom's public name of the streamed file (None: not streamed)
    if isinstance(path, Path):
        if path.parent == ingester.archive.tmp:
            return path
        with ingester.archive.new_spool() as copy, path.open("rb") as source:
            while chunk := source.read(1 << 20):
                copy.write(chunk)
        return copy.path
    return ingester.archive.spool_bytes(event.encoded_dataset(include_meta=True))


def called_titles(settings: Settings) -> frozenset[str]:
    """The called AE titles the listener answers to: its own and the configured aliases.

    AE titles compare exactly, case included (PS3.5 Table 6.2-1 AE: only leading and trailing
    spaces are insignificant), so ``raddraft`` is not ``RADDRAFT``.
    """
    return frozenset(t.strip() for t in (settings.ae_title, *settings.called_ae_aliases) if t)


def _called_ae_title(event: Event) -> str:
    primitive = getattr(event.assoc.requestor, "primitive", None)
    return str(getattr(primitive, "called_ae_title", "") or "").strip()


def handle_requested(event: Event, ingester: Ingester) -> None:
    """A-ASSOCIATE-RQ received (PS3.8 7.1.1), before negotiation: a called AE title that is one
    of the aliases becomes the acceptor's title for this association, so pynetdicom's called
    AE title check (``require_called_aet``) passes and the A-ASSOCIATE-AC echoes it; any other
    title is rejected there: rejected-permanent, source service-user, reason 7 "called AE
    title not recognized" (PS3.8 Table 9-21)."""
    called = _called_ae_title(event)
    if called != ingester.settings.ae_title.strip() and called in called_titles(ingester.settings):
        event.assoc.acceptor.ae_title = called


def handle_rejected(event: Event, ingester: Ingester) -> None:
    """A-ASSOCIATE-RJ sent (PS3.8 7.1.1.9): say who and why in the log and the event table.

    pynetdicom rejects for three reasons here: a calling AE title not on the allow-list
    (permanent, reason 3 "calling AE title not recognized"), a called AE title that is neither
    ours nor an alias (permanent, reason 7) or the association limit (transient).
    """
    _negotiated(event)
    origin = _origin(event)
    settings = ingester.settings
    called = _called_ae_title(event)
    reasons = []
    if not settings.any_caller and origin.calling_ae_title not in settings.allowed_callers:
        reasons.append("calling AE title not allowed")
    if called not in called_titles(settings):
        reasons.append(f"called AE title {called!r} not recognised")
    why = "; ".join(reasons) or f"association limit reached (max {settings.max_associations})"
    log.warning(
        "association rejected %s",
        kv(
            calling=origin.calling_ae_title,
            called=called,
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


def _negotiated(event: Event) -> None:
    """Tell the server the association on this connection is negotiated (accepted or
    rejected), so its setup deadline no longer applies."""
    server = getattr(event.assoc, "_server", None)
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(server, ListenerServer) and sock is not None:
        server.negotiated(sock)


def handle_accepted(event: Event, ingester: Ingester) -> None:
    _negotiated(event)
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
    # The called AE title must be ours (or an alias, see handle_requested): PS3.8 7.1.1.4.
    ae.require_called_aet = True
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


@dataclass
class _Connection:
    """One accepted TCP connection, until its association is negotiated (or it closes)."""

    host: str
    accepted: float  # time.monotonic()
    sock: socket.socket
    negotiated: bool = False


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server plus a host allow-list, a cap per peer address, a deadline
    for association negotiation and a TLS handshake that cannot stall the accept loop.

    Half-open connections (issue 20, item 5): twenty connections that sent a few bytes of an
    A-ASSOCIATE-RQ and stalled held every association slot for a minute, since each waits
    ``network_timeout`` for its next byte and counts against ``max_associations`` meanwhile.
    Now one address holds at most ``max_connections_per_peer`` connections (more are closed at
    accept), and a connection that has not completed association negotiation (PS3.8 9.2, the
    A-ASSOCIATE-RQ read and answered with AC or RJ) ``setup_seconds`` after accept is shut
    down, however slowly it trickles bytes: ARTIM (PS3.8 9.1.5) for the request's arrival.
    """

    allowed_hosts: frozenset[str] = frozenset()
    handshake_timeout: float = 10.0
    # socketserver's listen backlog is 5: a burst of connections beyond it waits for SYN
    # retransmits (1 s, 3 s, ...) before the accept loop even sees them to refuse or serve.
    request_queue_size = 128
    setup_seconds: float = 5.0
    max_connections_per_peer: int = 8

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: list[_Connection] = []
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Hosts are checked at TCP accept: a host not on the list, or one that already holds
        ``max_connections_per_peer`` connections, gets no association at all."""
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if self.allowed_hosts and "*" not in self.allowed_hosts and host not in self.allowed_hosts:
            log.warning("connection refused, host not allowed %s", kv(peer=host))
            return False
        with self._connections_lock:
            self._forget_closed()
            held = sum(1 for c in self._connections if c.host == host)
            if held >= self.max_connections_per_peer:
                refused = True
            else:
                refused = False
                self._connections.append(_Connection(host, time.monotonic(), request))
        if refused:
            log.warning(
                "connection refused, too many from this address %s",
                kv(peer=host, open=held, limit=self.max_connections_per_peer),
            )
            return False
        return True

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only: the TLS handshake runs in the connection's own thread
        (:meth:`process_request_thread`), so a peer that never sends its ClientHello holds
        that thread, not the accept loop (it blocked every other connection for 10 s)."""
        assert self.socket is not None
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # An accepted socket blocks forever by default: a peer that stops mid-PDU would hold
        # its thread and association slot for good. network_timeout bounds every read.
        client.settimeout(self.ae.network_timeout)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.ssl_context:
            request = self._handshake(request, client_address)
            if request is None:
                return
        super().process_request_thread(request, client_address)

    def _handshake(self, client: socket.socket, address: Any) -> ssl.SSLSocket | None:
        """The TLS handshake with a deadline; a failed one (no or untrusted client certificate,
        a silent peer) is logged and audited, and the connection closed."""
        assert self.ssl_context is not None
        client.settimeout(min(self.handshake_timeout, self.setup_seconds))
        try:
            wrapped = self.ssl_context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError) as error:
            peer = f"{address[0]}:{address[1]}"
            log.warning("TLS handshake failed, connection closed %s", kv(peer=peer, why=str(error)))
            if atna.enabled():
                why = f"TLS handshake failed: {error}"
                atna.emit(atna.security_alert(peer=peer, calling_aet="", why=why))
            self.shutdown_request(client)
            return None
        wrapped.settimeout(self.ae.network_timeout)
        with self._connections_lock:
            for connection in self._connections:
                if connection.sock is client:
                    connection.sock = wrapped
        return wrapped

    def negotiated(self, sock: object) -> None:
        """The association on ``sock`` was accepted or rejected: no deadline any more."""
        with self._connections_lock:
            for connection in self._connections:
                if connection.sock is sock:
                    connection.negotiated = True

    def service_actions(self) -> None:
        """Every poll of the accept loop (0.2 s): shut down connections past the negotiation
        deadline. Shutting the socket down wakes the thread blocked reading it, which then
        ends the association (PS3.8 Evt17, transport closed) and frees its slot."""
        super().service_actions()
        now = time.monotonic()
        late: list[_Connection] = []
        with self._connections_lock:
            self._forget_closed()
            for connection in self._connections:
                if not connection.negotiated and now - connection.accepted > self.setup_seconds:
                    late.append(connection)
            for connection in late:
                self._connections.remove(connection)
        for connection in late:
            log.warning(
                "connection closed, association not negotiated in time %s",
                kv(peer=connection.host, seconds=self.setup_seconds),
            )
            with contextlib.suppress(OSError):
                # socket.socket's own shutdown, also for an SSLSocket: no TLS close_notify to
                # a peer that never finished its request, and no state the reading thread uses.
                socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)

    def _forget_closed(self) -> None:
        """Forget connections whose socket is closed; negotiated ones stay, counted against
        their address, until then (the caller holds the lock)."""
        self._connections = [c for c in self._connections if c.sock.fileno() != -1]


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
            (evt.EVT_REQUESTED, handle_requested, [self.ingester]),
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
        server.setup_seconds = self.settings.association_setup_seconds
        server.max_connections_per_peer = self.settings.max_connections_per_peer
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

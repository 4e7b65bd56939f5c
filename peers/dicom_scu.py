"""RadDraft as a DICOM service class user: exporting results and fetching priors.

Everything here opens its own association (PS3.8 Upper Layer, PS3.7 Annex D association
negotiation) to one remote application entity (:class:`~raddraft.settings.DicomNode`) and closes
it again before returning:

- :func:`store` sends SR, GSPS and images with the Storage Service Class (PS3.4 Annex B, C-STORE
  PS3.7 9.1.1) over one association, proposing presentation contexts for exactly the SOP classes
  being sent.
- :func:`find_prior_studies` asks a PACS for a patient's earlier studies (Query/Retrieve Service
  Class, PS3.4 Annex C, Study Root C-FIND at STUDY level, PS3.4 C.6.2).
- :func:`move_study` asks the PACS to send a study to an AE title it knows (C-MOVE, PS3.4 C.4.2;
  the PACS must be configured with RadDraft's AE title, host and port).

Failures are typed so that a caller can decide between retrying and dead-lettering:
:class:`TransientExportError` / :class:`TransientQueryError` (worth retrying with backoff) and
:class:`PermanentExportError` / :class:`PermanentQueryError` (a retry would fail the same way).
All of them derive from :class:`ScuError`, whose ``transient`` attribute says which kind it is.
:func:`classify_status` is the one table that maps DIMSE status codes (PS3.7 Annex C) to those
kinds.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from raddraft import atna
from raddraft.settings import DicomNode

__all__ = [
    "InstanceStatus",
    "MoveOutcome",
    "PermanentExportError",
    "PermanentQueryError",
    "PriorStudy",
    "ScuError",
    "StatusKind",
    "StoreOutcome",
    "TransientExportError",
    "TransientQueryError",
    "classify_status",
    "find_prior_studies",
    "move_study",
    "store",
]

LOGGER = logging.getLogger(__name__)

#: The uncompressed transfer syntaxes offered for every SOP class (PS3.5 A.1, A.2): the
#: objects RadDraft builds are Explicit VR Little Endian; Implicit VR Little Endian is the
#: default every SCP must accept (PS3.5 10.1).
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# PS3.8 9.3.2: at most 128 presentation contexts (odd IDs 1..255) in one A-ASSOCIATE-RQ.
_MAX_CONTEXTS = 128


# --------------------------------------------------------------------------------------------
# Errors and status classification
# --------------------------------------------------------------------------------------------


class ScuError(Exception):
    """A DICOM operation against a remote node failed.

    ``status`` is the DIMSE status (PS3.7 Annex C) when the peer answered with one, ``None``
    when the failure happened at association level (PS3.8 7.1 A-ASSOCIATE, 7.3 A-ABORT, or no
    answer). ``outcome`` carries what was done before the failure, when anything was.
    """

    transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        node: DicomNode | None = None,
        status: int | None = None,
        outcome: StoreOutcome | MoveOutcome | None = None,
    ) -> None:
        super().__init__(message)
        self.node = node
        self.status = status
        self.outcome = outcome

    def __str__(self) -> str:
        text = super().__str__()
        if self.status is not None:
            text += f" (status 0x{self.status:04X})"
        if self.node is not None:
            text += f" [{self.node}]"
        return text


class TransientExportError(ScuError):
    """Sending results failed in a way that may succeed later: retry with backoff.

    No answer, connection refused, timeouts, an A-ASSOCIATE-RJ with result 2
    ("rejected-transient", PS3.8 9.3.4), an A-ABORT, or a C-STORE failure status of the
    "out of resources" (0xA7xx) or processing-failure kind (PS3.4 B.2.3).
    """

    transient = True


class PermanentExportError(ScuError):
    """Sending results failed in a way a retry will not fix: dead-letter at once.

    A-ASSOCIATE-RJ with result 1 ("rejected-permanent", e.g. called AE title not recognised),
    no accepted presentation context for a SOP class being sent (PS3.8 9.3.3.2 results 1, 3,
    4), or a C-STORE failure status 0xA9xx (data set does not match SOP class), 0xCxxx (cannot
    understand), 0x0122 (SOP class not supported) and similar (PS3.4 B.2.3, PS3.7 C.4).
    """

    transient = False


class TransientQueryError(ScuError):
    """A C-FIND/C-MOVE/C-GET failed in a way that may succeed later (see TransientExportError)."""

    transient = True


class PermanentQueryError(ScuError):
    """A C-FIND/C-MOVE/C-GET failed in a way a retry will not fix (e.g. 0xA801 unknown
    move destination, 0xA900 identifier does not match SOP class, association rejected
    permanently)."""

    transient = False


StatusKind = Literal["success", "warning", "pending", "cancel", "transient", "permanent"]

# Failure statuses outside the 0xA7xx/0xA9xx/0xCxxx ranges (PS3.7 C.4 general statuses).
_TRANSIENT_CODES = frozenset(
    {
        0x0110,  # Processing failure: often a locked database or full disk at the peer.
        0x0210,  # Duplicate invocation (message ID clash): a new association fixes it.
        0x0213,  # Resource limitation.
        0xA701,  # Out of resources: unable to calculate number of matches (C-MOVE/C-GET).
        0xA702,  # Out of resources: unable to perform sub-operations (C-MOVE/C-GET).
    }
)
_PERMANENT_CODES = frozenset(
    {
        0x0105,  # No such attribute.
        0x0106,  # Invalid attribute value.
        0x0107,  # Attribute list error.
        0x0112,  # No such SOP instance.
        0x0117,  # Invalid object instance.
        0x0118,  # No such SOP class.
        0x0119,  # Class-instance conflict.
        0x0120,  # Missing attribute.
        0x0121,  # Missing attribute value.
        0x0122,  # Refused: SOP class not supported (PS3.4 B.2.3).
        0x0124,  # Refused: not authorized.
        0x0211,  # Unrecognized operation.
        0x0212,  # Mistyped argument.
        0xA801,  # Refused: move destination unknown (PS3.4 C.4.2.1.5).
    }
)
# Warnings that still mean "stored" (PS3.4 B.2.3): coercion of data elements, elements
# discarded, data set does not match SOP class; 0x0001 is the general warning (PS3.7 C.4).
# 0x0111 "duplicate SOP instance" also means the object is there already: RadDraft makes its
# own UIDs, so a duplicate is a result sent before (a retry after a lost response).
_STORED_WARNINGS = frozenset({0x0001, 0x0107, 0x0111, 0x0116, 0xB000, 0xB006, 0xB007})


def classify_status(status: int) -> StatusKind:
    """Sort a DIMSE status code (PS3.7 Annex C, PS3.4 B.2.3 and C.4) into what a caller does.

    ``success`` 0x0000; ``warning`` 0x0001, 0xBxxx and the warnings listed above (the
    operation took effect); ``pending`` 0xFF00/0xFF01; ``cancel`` 0xFE00; ``transient``
    0xA7xx, processing failure 0x0110, resource limitation 0x0213, duplicate invocation
    0x0210; ``permanent`` 0xA9xx, 0xCxxx, 0x0122 SOP class not supported, 0xA801 move
    destination unknown and every other failure. Unknown codes count as permanent: retrying
    something not understood would only loop.
    """
    if status == 0x0000:
        return "success"
    if status in (0xFF00, 0xFF01):
        return "pending"
    if status == 0xFE00:
        return "cancel"
    if status in _STORED_WARNINGS or 0xB000 <= status <= 0xBFFF:
        return "warning"
    if status in _TRANSIENT_CODES or 0xA700 <= status <= 0xA7FF:
        return "transient"
    return "permanent"


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceStatus:
    """The peer's answer to one C-STORE request (PS3.7 9.3.1.2)."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    kind: StatusKind
    transfer_syntax: str
    error_comment: str = ""
    offending_elements: tuple[str, ...] = ()

    @property
    def stored(self) -> bool:
        """Success or a warning status: the peer keeps the object."""
        return self.kind in ("success", "warning")


@dataclass
class StoreOutcome:
    """What one :func:`store` call did on its association."""

    node: DicomNode
    calling_ae: str
    instances: list[InstanceStatus] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def warnings(self) -> list[InstanceStatus]:
        """Instances stored with a warning status (0xB000, 0xB006, 0xB007, ...)."""
        return [i for i in self.instances if i.kind == "warning"]

    @property
    def stored(self) -> list[str]:
        """SOP Instance UIDs the peer accepted."""
        return [i.sop_instance_uid for i in self.instances if i.stored]


@dataclass(frozen=True)
class PriorStudy:
    """One study-level C-FIND match (PS3.4 C.6.2.1.2, Study Root STUDY level keys)."""

    study_instance_uid: str
    study_date: str
    study_time: str
    modalities: tuple[str, ...]
    study_description: str
    accession_number: str
    patient_id: str
    retrieve_ae_title: str = ""

    @property
    def when(self) -> dt.datetime:
        """Study date and time as a naive datetime (missing parts count as earliest)."""
        return _parse_when(self.study_date, self.study_time)


@dataclass
class MoveOutcome:
    """The final answer to a C-MOVE or C-GET (PS3.4 C.4.2.1.6 / C.4.3.1.6 sub-operation counts)."""

    node: DicomNode
    study_instance_uid: str
    status: int
    kind: StatusKind
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_sop_instance_uids: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every sub-operation succeeded (none failed)."""
        return self.kind in ("success", "warning") and self.failed == 0


# --------------------------------------------------------------------------------------------
# Association handling
# --------------------------------------------------------------------------------------------


def _make_ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    # PS3.8 9.1.1 ARTIM / connection, ACSE (association), DIMSE (message) and network idle
    # time limits: every wait in pynetdicom is bounded by `timeout`.
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


def _describe_reject(primitive: A_ASSOCIATE) -> str:
    return (
        f"association rejected: {primitive.result_str}, source {primitive.source_str}, "
        f"reason {primitive.reason_str}"
    )


def _reject_is_transient(primitive: A_ASSOCIATE) -> bool:
    """PS3.8 9.3.4: result 2 is rejected-transient; result 1 is rejected-permanent.

    Service-provider (presentation) rejections "temporary congestion" and "local limit
    exceeded" (source 3, reasons 1 and 2) are transient by nature even when a peer labels the
    result permanent.
    """
    if primitive.result == 0x02:
        return True
    return primitive.result_source == 0x03 and primitive.diagnostic in (0x01, 0x02)


def _rejection(assoc: Association, received: list[A_ASSOCIATE]) -> A_ASSOCIATE | None:
    """The peer's A-ASSOCIATE-RJ (PS3.8 9.3.4), if one came back.

    pynetdicom (3.0.4) can lose it: when the RJ arrives and the transport is closed (AE-4)
    before the requesting thread checks the connection, that thread aborts instead of reading
    the rejection (about one association in 200 on a 2-core test machine). The PDU itself was
    received and decoded, so ``received`` (filled by an EVT_PDU_RECV handler) still has it.
    """
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        return assoc.acceptor.primitive
    return received[0] if received else None


# TLS failures that are about the connection, not the configuration.
_SSL_TRANSIENT = (
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    ssl.SSLSyscallError,
    ssl.SSLWantReadError,
)


class _ConnectErrors(logging.Handler):
    """Collects the exception pynetdicom logs (and swallows) when a connection fails.

    pynetdicom reports a failed TCP connect or TLS handshake only through its log; the record
    comes from the association's DUL thread, which tells concurrent associations apart.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def error_for(self, assoc: Association) -> BaseException | str | None:
        ident = getattr(assoc.dul, "ident", None)
        text: str | None = None
        for record in self.records:
            if record.thread != ident:
                continue
            if record.exc_info and record.exc_info[1] is not None:
                return record.exc_info[1]
            message = record.getMessage()
            if message.startswith("TCP Initialisation Error: "):
                text = message.removeprefix("TCP Initialisation Error: ")
        return text


@contextmanager
def _associate(  # noqa: C901,PLR0913 (each association failure (PS3.8 9.3) is told apart here, once)
    node: DicomNode,
    *,
    calling_ae: str,
    contexts: list[PresentationContext],
    timeout: float,
    tls: ssl.SSLContext | None,
    transient: type[ScuError],
    permanent: type[ScuError],
    ext_neg: list[object] | None = None,
    handlers: list[tuple[evt.EventType, Callable[..., object]]] | None = None,
) -> Iterator[Association]:
    """Open an association (PS3.7 D.3, PS3.8 7.1), classify its failure, release it after."""
    if len(contexts) > _MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts: PS3.8 allows at most 128")
    ae = _make_ae(calling_ae, timeout)
    connected = threading.Event()

    rejections: list[A_ASSOCIATE] = []

    def _on_open(event: evt.Event) -> None:
        connected.set()

    def _on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejections.append(event.pdu.to_primitive())

    evt_handlers: list[tuple[evt.EventType, Callable[..., object]]] = [
        (evt.EVT_CONN_OPEN, _on_open),
        (evt.EVT_PDU_RECV, _on_pdu),
        *(handlers or []),
    ]
    tls_args = (tls, node.host) if tls is not None else None
    started = time.monotonic()
    watcher = _ConnectErrors()
    transport_log = logging.getLogger("pynetdicom.transport")
    transport_log.addHandler(watcher)
    try:
        assoc = ae.associate(
            node.host,
            node.port,
            contexts=contexts,
            ae_title=node.ae_title,
            ext_neg=ext_neg,  # type: ignore[arg-type]
            evt_handlers=evt_handlers,  # type: ignore[arg-type]
            tls_args=tls_args,
        )
    finally:
        transport_log.removeHandler(watcher)
    if not assoc.is_established:
        rejection = _rejection(assoc, rejections)
        if rejection is not None:
            kind = transient if _reject_is_transient(rejection) else permanent
            raise kind(_describe_reject(rejection), node=node)
        if assoc.is_rejected:
            raise transient("association rejected", node=node)
        if not connected.is_set():
            waited = time.monotonic() - started
            error = watcher.error_for(assoc)
            if isinstance(error, ssl.SSLError) and not isinstance(error, _SSL_TRANSIENT):
                # Certificate not trusted, wrong host name, no common protocol or cipher, a
                # peer that does not speak TLS: the same on every retry until reconfigured.
                raise permanent(f"TLS handshake failed: {error}", node=node)
            why = f": {error}" if error else " (refused, unreachable or no answer)"
            raise transient(f"could not connect{why} after {waited:.1f} s", node=node)
        if assoc.is_aborted and assoc.acceptor.primitive is not None:
            # A-ASSOCIATE-AC came back but nothing we proposed was accepted (PS3.8 9.3.3.2).
            raise permanent(
                "association accepted but no proposed presentation context was accepted",
                node=node,
            )
        raise transient(
            f"association aborted or no A-ASSOCIATE response within {timeout:g} s", node=node
        )
    # Only the negotiation can bring an RJ; the transfer's PDUs need no look.
    assoc.unbind(evt.EVT_PDU_RECV, _on_pdu)
    try:
        yield assoc
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()


@contextmanager
def _deadline(assoc: Association, seconds: float) -> Iterator[threading.Event]:
    """Abort ``assoc`` (PS3.8 A-ABORT) once ``seconds`` pass; the event says it fired."""
    fired = threading.Event()

    def _expire() -> None:
        fired.set()
        if assoc.is_established:
            assoc.abort()

    timer = threading.Timer(seconds, _expire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


# --------------------------------------------------------------------------------------------
# C-STORE SCU
# --------------------------------------------------------------------------------------------


@dataclass
class _Item:
    source: Dataset | Path
    sop_class_uid: UID
    sop_instance_uid: UID
    transfer_syntax: UID


def _prepare(obj: Dataset | Path | str) -> _Item:
    if isinstance(obj, Dataset):
        ds = obj
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is None:
            # A data set built in memory has no encoding yet: send it as PS3.5 A.2 explicit.
            ds = copy.copy(obj)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            syntax = ExplicitVRLittleEndian
        return _Item(ds, UID(ds.SOPClassUID), UID(ds.SOPInstanceUID), UID(syntax))
    path = Path(obj)
    head = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    meta = head.file_meta
    sop_class = meta.get("MediaStorageSOPClassUID") or head.get("SOPClassUID")
    sop_instance = meta.get("MediaStorageSOPInstanceUID") or head.get("SOPInstanceUID")
    syntax = meta.get("TransferSyntaxUID")
    if not sop_class or not sop_instance or not syntax:
        raise ValueError(f"{path}: no SOP class, SOP instance or transfer syntax in its meta")
    return _Item(path, UID(sop_class), UID(sop_instance), UID(syntax))


def _is_plain(syntax: UID) -> bool:
    return syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


def _storage_contexts(items: Iterable[_Item]) -> list[PresentationContext]:
    """One context per SOP class with the uncompressed syntaxes, one more per other syntax.

    pynetdicom may re-encode an uncompressed data set into any accepted uncompressed syntax,
    so one context [Explicit VR LE, Implicit VR LE] serves them all (PS3.5 10.1). A compressed
    (or deflated) data set gets a context with its own syntax so it travels unchanged; the
    uncompressed context is its fallback (decompressed before sending).
    """
    syntaxes: dict[UID, list[UID]] = {}
    for item in items:
        wanted = syntaxes.setdefault(item.sop_class_uid, [])
        if not _is_plain(item.transfer_syntax) and item.transfer_syntax not in wanted:
            wanted.append(item.transfer_syntax)
    contexts = []
    for sop_class, others in syntaxes.items():
        contexts.append(build_context(sop_class, list(UNCOMPRESSED)))
        contexts.extend(build_context(sop_class, syntax) for syntax in others)
    return contexts


def _accepted_syntaxes(assoc: Association) -> dict[str, set[str]]:
    accepted: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), set()).update(
            str(ts) for ts in cx.transfer_syntax
        )
    return accepted


def _load_for_sending(item: _Item, accepted: set[str], node: DicomNode) -> Dataset:
    """The data set to send, decompressed when the peer takes only uncompressed syntaxes."""
    ds = item.source if isinstance(item.source, Dataset) else dcmread(item.source)
    syntax = item.transfer_syntax
    if syntax in accepted or (_is_plain(syntax) and accepted & set(UNCOMPRESSED)):
        return ds
    if not accepted & set(UNCOMPRESSED):
        raise PermanentExportError(
            f"{item.sop_instance_uid}: peer accepts {item.sop_class_uid} only in "
            f"{sorted(accepted)}, not in {syntax}",
            node=node,
        )
    if syntax == DeflatedExplicitVRLittleEndian:
        ds = copy.copy(ds)
        ds.file_meta = copy.copy(ds.file_meta)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return ds
    try:
        ds = copy.deepcopy(ds) if isinstance(item.source, Dataset) else ds
        ds.decompress()
    except Exception as exc:  # any pixel-data handler failure
        raise PermanentExportError(
            f"{item.sop_instance_uid}: peer does not accept {syntax} and it cannot be "
            f"decompressed here: {exc}",
            node=node,
        ) from exc
    return ds


def store(
    node: DicomNode,
    datasets: Sequence[Dataset | Path],
    *,
    calling_ae: str,
    tls: ssl.SSLContext | None = None,
    timeout: float = 30,
) -> StoreOutcome:
    """Send ``datasets`` to ``node`` with C-STORE (PS3.4 Annex B) over one association.

    The association proposes presentation contexts for exactly the SOP classes being sent
    (Comprehensive 3D SR, Comprehensive SR, Enhanced SR, GSPS, images, ...), each with Explicit
    and Implicit VR Little Endian, plus the data set's own syntax when it is compressed
    (PS3.7 D.3.3.2, PS3.8 9.3.2.2). ``datasets`` may be data sets (with file meta giving the
    transfer syntax; without it they go as Explicit VR Little Endian) or paths to DICOM files
    (read one at a time while sending). ``tls`` wraps the connection (PS3.15 B.1 secure
    transport). ``timeout`` bounds each wait: connection, association negotiation, every
    C-STORE response and network idle time.

    Instances go in the given order; the first failure stops the association. Returns every
    instance's status; warnings (0xB000 coercion, 0xB006 elements discarded, 0xB007 data set
    does not match SOP class, ...) count as stored and are listed in ``outcome.warnings``.

    Raises :class:`TransientExportError` (connection refused or timed out, rejected-transient,
    aborted, 0xA7xx, processing failure) or :class:`PermanentExportError` (rejected-permanent,
    a SOP class or transfer syntax the peer does not accept - checked before anything is
    sent - 0xA9xx, 0xCxxx, 0x0122, ...). Either carries the partial :class:`StoreOutcome` in
    ``outcome``. Unreadable files raise their reading error (a local fault, not the peer's).
    """
    started = time.monotonic()
    outcome = StoreOutcome(node=node, calling_ae=calling_ae)
    if not datasets:
        return outcome
    items = [_prepare(obj) for obj in datasets]
    contexts = _storage_contexts(items)
    with _associate(
        node,
        calling_ae=calling_ae,
        contexts=contexts,
        timeout=timeout,
        tls=tls,
        transient=TransientExportError,
        permanent=PermanentExportError,
    ) as assoc:
        accepted = _accepted_syntaxes(assoc)
        missing = sorted({str(i.sop_class_uid) for i in items} - set(accepted))
        if missing:
            names = ", ".join(f"{UID(uid).name}" for uid in missing)
            raise PermanentExportError(
                f"peer rejected the presentation context for {names}", node=node, status=0x0122
            )
        for number, item in enumerate(items, start=1):
            try:
                ds = _load_for_sending(item, accepted[str(item.sop_class_uid)], node)
                rsp = assoc.send_c_store(ds, msg_id=number % 65536)
            except ScuError as exc:
                exc.outcome = outcome
                raise
            except (ValueError, AttributeError) as exc:  # pynetdicom: no context / encoding
                raise PermanentExportError(
                    f"{item.sop_instance_uid}: cannot be sent: {exc}", node=node, outcome=outcome
                ) from exc
            if not rsp or "Status" not in rsp:
                raise TransientExportError(
                    f"{item.sop_instance_uid}: no C-STORE response (timeout {timeout:g} s, "
                    "abort or invalid reply)",
                    node=node,
                    outcome=outcome,
                )
            status = int(rsp.Status)
            kind = classify_status(status)
            offending = rsp.get("OffendingElement") or ()
            if not isinstance(offending, (list, tuple)) and offending:
                offending = (offending,)
            result = InstanceStatus(
                sop_class_uid=str(item.sop_class_uid),
                sop_instance_uid=str(item.sop_instance_uid),
                status=status,
                kind=kind,
                transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                error_comment=str(rsp.get("ErrorComment", "") or ""),
                offending_elements=tuple(str(tag) for tag in offending),
            )
            outcome.instances.append(result)
            if kind in ("success", "warning"):
                if kind == "warning":
                    LOGGER.warning(
                        "%s stored %s with warning 0x%04X %s",
                        node,
                        item.sop_instance_uid,
                        status,
                        result.error_comment,
                    )
                continue
            outcome.seconds = time.monotonic() - started
            error = TransientExportError if kind == "transient" else PermanentExportError
            detail = f": {result.error_comment}" if result.error_comment else ""
            raise error(
                f"C-STORE of {item.sop_instance_uid} ({item.sop_class_uid.name}) failed{detail}",
                node=node,
                status=status,
                outcome=outcome,
            )
    outcome.seconds = time.monotonic() - started
    return outcome


# --------------------------------------------------------------------------------------------
# Query/Retrieve SCU
# --------------------------------------------------------------------------------------------


def _parse_when(date: str, time_: str) -> dt.datetime:
    try:
        day = dt.datetime.strptime(date[:8], "%Y%m%d")
    except ValueError:
        return dt.datetime.min
    digits = "".join(ch for ch in time_.split(".")[0] if ch.isdigit())[:6].ljust(6, "0")
    try:
        return day.replace(hour=int(digits[:2]), minute=int(digits[2:4]), second=int(digits[4:6]))
    except ValueError:
        return day


def _study_query(patient_id: str, date_range: str, modality: str | None) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyDate = date_range
    query.StudyTime = ""
    query.StudyInstanceUID = ""
    query.ModalitiesInStudy = modality or ""
    query.StudyDescription = ""
    query.AccessionNumber = ""
    query.RetrieveAETitle = ""
    return query


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _final_failure(
    what: str,
    status_ds: Dataset,
    node: DicomNode,
    transient: type[ScuError],
    permanent: type[ScuError],
    outcome: MoveOutcome | None = None,
) -> ScuError:
    status = int(status_ds.Status)
    kind = classify_status(status)
    comment = str(status_ds.get("ErrorComment", "") or "")
    detail = f": {comment}" if comment else ""
    error = transient if kind in ("transient", "cancel") else permanent
    return error(f"{what} failed{detail}", node=node, status=status, outcome=outcome)


def find_prior_studies(  # noqa: PLR0913 (the C-FIND keys of a prior-study query (PS3.4 C.6.1))
    node: DicomNode,
    *,
    calling_ae: str,
    patient_id: str,
    before_date: str,
    before_time: str | None = None,
    modalities: Sequence[str] = ("CR", "DX"),
    exclude_study_uid: str | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = 60,
) -> list[PriorStudy]:
    """A patient's studies up to ``before_date`` (YYYYMMDD), newest first (C-FIND, PS3.4 C.6.2).

    Study Root Query/Retrieve Information Model - FIND at STUDY level, one request per modality
    on one association: PatientID single value matching, ModalitiesInStudy single value
    matching (multi-value matching of ModalitiesInStudy is not supported by every PACS), and
    StudyDate range matching ``-<before_date>`` (PS3.4 C.2.2.2.5). Same-day studies are
    kept (ICU follow-ups are same-day priors) unless ``before_time`` (HHMMSS) says they were
    later; ``exclude_study_uid`` (the current study) is always dropped. Matches are checked
    again here (patient, date, modality), because not every PACS applies all keys.

    ``timeout`` is a hard limit for the whole call: the association is aborted when it passes.
    Raises :class:`TransientQueryError` / :class:`PermanentQueryError`.
    """
    dt.datetime.strptime(before_date, "%Y%m%d")  # ValueError for a malformed date
    limit = _parse_when(before_date, before_time or "235959")
    wanted = tuple(m.upper() for m in modalities)
    found: dict[str, PriorStudy] = {}
    context = build_context(StudyRootQueryRetrieveInformationModelFind, list(UNCOMPRESSED))
    try:
        with (
            _associate(
                node,
                calling_ae=calling_ae,
                contexts=[context],
                timeout=timeout,
                tls=tls,
                transient=TransientQueryError,
                permanent=PermanentQueryError,
            ) as assoc,
            _deadline(assoc, timeout) as expired,
        ):
            for number, modality in enumerate(wanted or (None,), start=1):
                query = _study_query(patient_id, f"-{before_date}", modality)
                responses = assoc.send_c_find(
                    query, StudyRootQueryRetrieveInformationModelFind, msg_id=number
                )
                for status_ds, identifier in responses:
                    if not status_ds or "Status" not in status_ds:
                        why = "time limit reached" if expired.is_set() else "no answer or abort"
                        raise TransientQueryError(f"C-FIND: {why} ({timeout:g} s)", node=node)
                    kind = classify_status(int(status_ds.Status))
                    if kind == "pending" and identifier is not None:
                        prior = PriorStudy(
                            study_instance_uid=_text(identifier, "StudyInstanceUID"),
                            study_date=_text(identifier, "StudyDate"),
                            study_time=_text(identifier, "StudyTime"),
                            modalities=tuple(
                                m for m in _text(identifier, "ModalitiesInStudy").split("\\") if m
                            ),
                            study_description=_text(identifier, "StudyDescription"),
                            accession_number=_text(identifier, "AccessionNumber"),
                            patient_id=_text(identifier, "PatientID") or patient_id,
                            retrieve_ae_title=_text(identifier, "RetrieveAETitle"),
                        )
                        if prior.study_instance_uid:
                            found.setdefault(prior.study_instance_uid, prior)
                    elif kind not in ("success", "warning", "pending"):
                        raise _final_failure(
                            "C-FIND", status_ds, node, TransientQueryError, PermanentQueryError
                        )
    except (TransientQueryError, PermanentQueryError):
        _audit_query(node, patient_id, before_date, atna.MINOR_FAILURE)
        raise
    _audit_query(node, patient_id, before_date, atna.SUCCESS)
    priors = [
        p
        for p in found.values()
        if p.study_instance_uid != exclude_study_uid
        and p.patient_id == patient_id
        and p.study_date
        and p.when <= limit
        and (not wanted or not p.modalities or set(p.modalities) & set(wanted))
    ]
    priors.sort(key=lambda p: p.when, reverse=True)
    return priors


def _audit_query(node: DicomNode, patient_id: str, before_date: str, outcome: str) -> None:
    """The ATNA Query record of a prior-study C-FIND (PS3.15 A.5.3.12), its keys attached."""
    if not atna.enabled():
        return
    keys = _study_query(patient_id, f"-{before_date}", None)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True  # the record says 1.2.840.10008.1.2
    write_dataset(buffer, keys)
    xml = atna.query(
        destination=node.ae_title,
        address=node.host,
        sop_class_uid=str(StudyRootQueryRetrieveInformationModelFind),
        identifier=buffer.getvalue(),
        outcome=outcome,
    )
    atna.emit(xml)


def _study_identifier(study_uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    return identifier


def _retrieve_outcome(
    node: DicomNode,
    study_uid: str,
    responses: Iterable[tuple[Dataset, Dataset | None]],
    what: str,
    expired: threading.Event,
    timeout: float,
    started: float,
) -> MoveOutcome:
    """Follow C-MOVE/C-GET responses (PS3.7 9.1.3/9.1.4) to the final one."""
    last: Dataset | None = None
    final_identifier: Dataset | None = None
    for status_ds, identifier in responses:
        if not status_ds or "Status" not in status_ds:
            why = "time limit reached" if expired.is_set() else "no answer or abort"
            raise TransientQueryError(f"{what} of {study_uid}: {why} ({timeout:g} s)", node=node)
        last = status_ds
        if classify_status(int(status_ds.Status)) != "pending":
            final_identifier = identifier
            break
    if last is None:
        raise TransientQueryError(f"{what} of {study_uid}: no response", node=node)
    status = int(last.Status)
    failed_uids: tuple[str, ...] = ()
    if final_identifier is not None and "FailedSOPInstanceUIDList" in final_identifier:
        value = final_identifier.FailedSOPInstanceUIDList
        failed_uids = tuple(str(v) for v in (value if isinstance(value, list) else [value]) if v)
    outcome = MoveOutcome(
        node=node,
        study_instance_uid=study_uid,
        status=status,
        kind=classify_status(status),
        completed=int(last.get("NumberOfCompletedSuboperations", 0) or 0),
        failed=int(last.get("NumberOfFailedSuboperations", 0) or 0),
        warning=int(last.get("NumberOfWarningSuboperations", 0) or 0),
        failed_sop_instance_uids=failed_uids,
        seconds=time.monotonic() - started,
    )
    if outcome.kind not in ("success", "warning"):
        raise _final_failure(
            what, last, node, TransientQueryError, PermanentQueryError, outcome=outcome
        )
    return outcome


def move_study(
    node: DicomNode,
    study_uid: str,
    *,
    calling_ae: str,
    destination_ae: str,
    tls: ssl.SSLContext | None = None,
    timeout: float = 60,
) -> MoveOutcome:
    """Ask ``node`` to send a study to ``destination_ae`` (C-MOVE, PS3.4 C.4.2, Study Root).

    The PACS opens its own association to the destination, so it must know that AE title's
    host and port (for priors: RadDraft's own ``ae_title`` and listener port); the instances
    arrive at the listener, not here. Returns the final sub-operation counts; a final
    0xB000 ("some sub-operations failed") is returned, not raised - check ``outcome.ok``.

    ``timeout`` is a hard limit for the whole retrieval; when it passes the association is
    aborted and :class:`TransientQueryError` raised. 0xA801 (move destination unknown) and
    0xA900 raise :class:`PermanentQueryError`; 0xA7xx, 0xC000-type "unable to process" do as
    :func:`classify_status` says.
    """
    started = time.monotonic()
    context = build_context(StudyRootQueryRetrieveInformationModelMove, list(UNCOMPRESSED))
    with (
        _associate(
            node,
            calling_ae=calling_ae,
            contexts=[context],
            timeout=timeout,
            tls=tls,
            transient=TransientQueryError,
            permanent=PermanentQueryError,
        ) as assoc,
        _deadline(assoc, timeout) as expired,
    ):
        responses = assoc.send_c_move(
            _study_identifier(study_uid), destination_ae, StudyRootQueryRetrieveInformationModelMove
        )
        return _retrieve_outcome(node, study_uid, responses, "C-MOVE", expired, timeout, started)

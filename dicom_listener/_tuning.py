"""pynetdicom tuning for large images, applied once per listener process.

Two changes, both behind pynetdicom's public switches or narrow, well-defined seams:

- ``_config.STORE_RECV_CHUNKED_DATASET``: a C-STORE data set is written to a file as its
  fragments arrive instead of accumulating in memory. pynetdicom creates that file with
  ``dimse_messages.NamedTemporaryFile``; we hand it a :class:`~dicom_listener.archive.Spool` in
  ``archive/.tmp`` so the finished file is renamed into the archive, never copied, and disk
  write-back starts while the rest is still on the wire.
- ``AssociationSocket.recv`` reads 4 KiB per ``socket.recv`` call and grows a ``bytearray``;
  a 10 MB image is ~2,500 calls. :func:`_recv_exact` fills one preallocated buffer with
  ``recv_into``: same contract (up to ``nr_bytes``, fewer only when the peer closed).

- ``transport.deepcopy``: every accepted association deep-copies the server's supported
  presentation contexts (~170 storage classes x 45 transfer syntaxes: 70-150 ms of CPU per
  association here, more than storing a 10 MB image). Negotiation only reads them
  (``presentation.negotiate_as_acceptor`` builds new result contexts), so a shallow list copy
  is enough; ``deepcopy`` is used nowhere else in that module.

- ``DULServiceProvider.receive_pdu``: an accepted connection that closes (or sends a PDU the
  state machine rejects) before its A-ASSOCIATE-RQ leaves the association thread waiting the
  whole ACSE timeout for a request that can no longer come, and it counts against the
  association limit meanwhile: sixteen connect-and-close probes every 30 s locked every modality
  out (bench/fuzz.py found it). :func:`_receive_pdu` waits in short slices and gives up as soon
  as the upper layer's thread has stopped or is back in Sta1 (idle) or Sta13 (awaiting
  close), PS3.8 9.2.

These reach into pynetdicom's internals, so they are tied to one release: pyproject.toml pins
pynetdicom to exactly :data:`TUNED_FOR`, and ``tests/listener/test_tuning.py`` checks that the
installed release is that one, that the seams are still where we patch them, and that the patch
applies. On any other release :func:`apply` leaves pynetdicom untouched (logging why) and the
listener falls back to ``event.encoded_dataset()`` (slower, same result); an upgrade of
pynetdicom means re-checking the seams and moving the pin and :data:`TUNED_FOR` together.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from copy import deepcopy as _deepcopy
from pathlib import Path
from typing import Any

import pynetdicom
from pynetdicom import _config
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import transport as _transport
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from dicom_listener.archive import Spool
from raddraft.logging import kv

log = logging.getLogger(__name__)

# The pynetdicom release whose internals the patches below were written against and tested on.
TUNED_FOR = "3.0.4"

_lock = threading.Lock()
_spool_dir: Path | None = None
_spool_limit: int | None = None
# The PDU length field is the peer's word (PS3.8 9.3.1): 0xFFFFFFFF would make the buffer
# below 4 GiB before a byte arrived. Longer reads than this abort the association.
_max_read = 1 << 20
_applied = False


class PduTooLong(OSError):
    """A PDU declares more bytes than the listener takes; pynetdicom then closes (Evt17)."""


def _recv_exact(self: AssociationSocket, nr_bytes: int) -> bytearray:
    if nr_bytes > _max_read:
        log.warning(
            "PDU refused, association aborted %s",
            kv(declared=nr_bytes, limit=_max_read, peer=_peer(self)),
        )
        raise PduTooLong(f"PDU declares {nr_bytes} bytes, above the {_max_read} byte limit")
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    read = 0
    sock: Any = self.socket
    while read < nr_bytes:
        got = sock.recv_into(view[read:], nr_bytes - read)
        if not got:  # peer closed: return what arrived, as pynetdicom's recv does
            del view
            return buffer[:read]
        read += got
    return buffer


def _peer(holder: AssociationSocket) -> str:
    try:
        host, port = holder.socket.getpeername()[:2]  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        return "?"
    return f"{host}:{port}"


_original_receive_pdu = DULServiceProvider.receive_pdu
_DEAD_STATES = ("Sta1", "Sta13")  # PS3.8 Table 9-10: idle, awaiting transport close
_SLICE = 0.05


def _receive_pdu(self: DULServiceProvider, wait: bool = False, timeout: float | None = None) -> Any:
    """pynetdicom's receive_pdu, but a wait for a primitive ends when none can come."""
    if not (wait and timeout) or self.assoc.is_established:
        return _original_receive_pdu(self, wait, timeout)
    deadline = time.monotonic() + timeout
    dead_polls = 0
    while True:
        primitive = _original_receive_pdu(self, True, min(_SLICE, timeout))
        if primitive is not None:
            return primitive
        state = self.state_machine.current_state
        idle = not self.is_alive() or (state in _DEAD_STATES and self.event_queue.empty())
        # Two polls in a row: an acceptor starts in Sta1 until its first event (Evt5) is done.
        dead_polls = dead_polls + 1 if idle else 0
        if dead_polls >= 2 or time.monotonic() >= deadline:
            return None


def _share_contexts(value: Any, memo: Any = None) -> Any:
    """Stand-in for ``deepcopy`` of the supported contexts: a new list, shared contexts."""
    return list(value) if isinstance(value, list) else _deepcopy(value, memo)


def _spool_factory(*_args: Any, **_kwargs: Any) -> Spool:
    directory = _spool_dir
    if directory is None:  # not set up by a listener: behave like a plain temp file
        directory = Path(tempfile.gettempdir())
    return Spool(directory, _spool_limit)


def apply(
    spool_dir: Path, *, max_dataset_bytes: int | None = None, max_pdu_read: int = 1 << 20
) -> bool:
    """Stream C-STORE data sets into ``spool_dir`` and speed up socket reads; True if applied.

    ``max_dataset_bytes`` bounds each spool file (beyond it the C-STORE is answered 0xA700),
    ``max_pdu_read`` the length a received PDU may declare.
    """
    global _spool_dir, _applied, _spool_limit, _max_read
    with _lock:
        _spool_dir = spool_dir
        _spool_limit = max_dataset_bytes
        _max_read = max_pdu_read
        if _applied:
            return True
        if pynetdicom.__version__ != TUNED_FOR:
            log.warning(
                "pynetdicom %s is not %s, the release the ingest tuning was made for; "
                "running without it",
                pynetdicom.__version__,
                TUNED_FOR,
            )
            return False
        seams = (
            hasattr(_dimse_messages, "NamedTemporaryFile")
            and hasattr(AssociationSocket, "recv")
            and hasattr(_transport, "deepcopy")
            and hasattr(DULServiceProvider, "receive_pdu")
        )
        if not seams:
            log.warning("pynetdicom internals changed; running without ingest tuning")
            return False
        _dimse_messages.NamedTemporaryFile = _spool_factory  # type: ignore[assignment,attr-defined]
        AssociationSocket.recv = _recv_exact  # type: ignore[method-assign]
        _transport.deepcopy = _share_contexts  # type: ignore[assignment,attr-defined]
        DULServiceProvider.receive_pdu = _receive_pdu  # type: ignore[method-assign]
        _config.STORE_RECV_CHUNKED_DATASET = True
        _applied = True
        return True

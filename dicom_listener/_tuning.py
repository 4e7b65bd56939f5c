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
from copy import deepcopy as _deepcopy
from pathlib import Path
from typing import Any

import pynetdicom
from pynetdicom import _config
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import transport as _transport
from pynetdicom.transport import AssociationSocket

from dicom_listener.archive import Spool

log = logging.getLogger(__name__)

# The pynetdicom release whose internals the patches below were written against and tested on.
TUNED_FOR = "3.0.4"

_lock = threading.Lock()
_spool_dir: Path | None = None
_applied = False


def _recv_exact(self: AssociationSocket, nr_bytes: int) -> bytearray:
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


def _share_contexts(value: Any, memo: Any = None) -> Any:
    """Stand-in for ``deepcopy`` of the supported contexts: a new list, shared contexts."""
    return list(value) if isinstance(value, list) else _deepcopy(value, memo)


def _spool_factory(*_args: Any, **_kwargs: Any) -> Spool:
    directory = _spool_dir
    if directory is None:  # not set up by a listener: behave like a plain temp file
        directory = Path(tempfile.gettempdir())
    return Spool(directory)


def apply(spool_dir: Path) -> bool:
    """Stream C-STORE data sets into ``spool_dir`` and speed up socket reads; True if applied."""
    global _spool_dir, _applied
    with _lock:
        _spool_dir = spool_dir
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
        )
        if not seams:
            log.warning("pynetdicom internals changed; running without ingest tuning")
            return False
        _dimse_messages.NamedTemporaryFile = _spool_factory  # type: ignore[assignment]
        AssociationSocket.recv = _recv_exact  # type: ignore[method-assign]
        _transport.deepcopy = _share_contexts  # type: ignore[assignment]
        _config.STORE_RECV_CHUNKED_DATASET = True
        _applied = True
        return True

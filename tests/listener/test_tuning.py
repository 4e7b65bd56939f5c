"""The pynetdicom tuning is tied to one release: pinned, its seams present, the patch applied."""

from __future__ import annotations

import inspect
import re
import socket
import tomllib
from pathlib import Path

import pynetdicom
from pynetdicom import association, dimse_messages, transport
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from dicom_listener import _tuning

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_pins_the_release_the_tuning_was_made_for() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in deps if re.match(r"pynetdicom\b", d)]
    assert pins == [f"pynetdicom=={_tuning.TUNED_FOR}"]
    assert pynetdicom.__version__ == _tuning.TUNED_FOR


def test_the_seams_are_where_the_patch_expects_them() -> None:
    # The association's acceptor contexts are deep-copied from the server's: what we replace.
    source = inspect.getsource(transport)
    assert "deepcopy(self.server.contexts)" in source
    # Chunked C-STORE data sets go to a NamedTemporaryFile looked up in dimse_messages.
    assert "NamedTemporaryFile(" in inspect.getsource(dimse_messages.DIMSEMessage)
    signature = inspect.signature(AssociationSocket.recv)
    assert list(signature.parameters) == ["self", "nr_bytes"]
    # The acceptor waits for its A-ASSOCIATE-RQ through receive_pdu(wait=True, timeout=...).
    receive = inspect.signature(_tuning._original_receive_pdu)
    assert list(receive.parameters) == ["self", "wait", "timeout"]
    assert "receive_pdu(wait=True, timeout=self.acse_timeout)" in inspect.getsource(
        association.Association.run_reactor
    )


def test_apply_patches_pynetdicom(tmp_path: Path) -> None:
    assert _tuning.apply(tmp_path)
    assert AssociationSocket.recv is _tuning._recv_exact
    assert transport.deepcopy is _tuning._share_contexts
    assert DULServiceProvider.receive_pdu is _tuning._receive_pdu
    spool = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    try:
        assert Path(spool.name).parent == tmp_path
    finally:
        spool.close()
        Path(spool.name).unlink(missing_ok=True)


def test_recv_exact_keeps_pynetdicoms_contract() -> None:
    """Up to ``nr_bytes``; fewer only when the peer closed."""
    ours, theirs = socket.socketpair()
    try:
        holder = AssociationSocket.__new__(AssociationSocket)
        holder.socket = ours
        theirs.sendall(b"abcdef")
        assert bytes(_tuning._recv_exact(holder, 4)) == b"abcd"
        theirs.close()
        assert bytes(_tuning._recv_exact(holder, 10)) == b"ef"
    finally:
        ours.close()


def test_recv_exact_refuses_a_pdu_longer_than_the_limit(tmp_path: Path) -> None:
    """The PDU length is the peer's word: 4 GiB declared must not become a 4 GiB buffer."""
    _tuning.apply(tmp_path, max_pdu_read=1 << 20)
    ours, theirs = socket.socketpair()
    try:
        holder = AssociationSocket.__new__(AssociationSocket)
        holder.socket = ours
        try:
            _tuning._recv_exact(holder, 0xFFFFFFF0)
        except _tuning.PduTooLong as error:
            assert "4294967280" in str(error)
        else:
            raise AssertionError("a 4 GiB read was attempted")
        theirs.sendall(b"abcd")
        assert bytes(_tuning._recv_exact(holder, 4)) == b"abcd"
    finally:
        ours.close()
        theirs.close()

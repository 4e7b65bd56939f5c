"""The pynetdicom tuning is tied to one release: pinned, its seams present, the patch applied."""

from __future__ import annotations

import inspect
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pynetdicom
import pytest
from pynetdicom import association, dimse_messages, transport
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
    """In a fresh interpreter: the patch is process-wide (chunked C-STORE data sets, the socket
    read), and must not leak into the other tests' pynetdicom clients in this process."""
    code = f"""
from pathlib import Path
from pynetdicom import _config, dimse_messages, transport
from pynetdicom.transport import AssociationSocket
from dicom_listener import _tuning
assert _tuning.apply(Path({str(tmp_path)!r}))
assert AssociationSocket.recv is _tuning._recv_exact
assert transport.deepcopy is _tuning._share_contexts
assert _config.STORE_RECV_CHUNKED_DATASET is True
spool = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
spool.close()
assert Path(spool.name).parent == Path({str(tmp_path)!r}), spool.name
print("patched")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "patched"


def test_recv_exact_keeps_pynetdicoms_contract() -> None:
    """Up to ``nr_bytes``; fewer only when the peer closed."""
    ours, theirs = socket.socketpair()
    try:
        # A stand-in with the one attribute _recv_exact reads: a half-made AssociationSocket
        # would upset pynetdicom's state for the tests that run after this one.
        holder = cast(AssociationSocket, SimpleNamespace(socket=ours))
        theirs.sendall(b"abcdef")
        assert bytes(_tuning._recv_exact(holder, 4)) == b"abcd"
        theirs.close()
        assert bytes(_tuning._recv_exact(holder, 10)) == b"ef"
    finally:
        ours.close()


def test_recv_exact_refuses_a_pdu_longer_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PDU length is the peer's word: 4 GiB declared must not become a 4 GiB buffer."""
    # The limit apply() would set, without patching pynetdicom for the rest of this process.
    monkeypatch.setattr(_tuning, "_max_read", 1 << 20)
    ours, theirs = socket.socketpair()
    try:
        # A stand-in with the one attribute _recv_exact reads: a half-made AssociationSocket
        # would upset pynetdicom's state for the tests that run after this one.
        holder = cast(AssociationSocket, SimpleNamespace(socket=ours))
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

"""C-STORE of compressed images (kept as is, or decompressed for a peer that wants it) and TLS."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, evt

from peers.dicom_scu import PermanentExportError, TransientExportError, store
from raddraft.settings import DicomNode
from tests.conftest import free_port
from tests.dicom_factory import compress, make_cxr
from tests.orthanc import OrthancServer
from tests.peers.conftest import RADDRAFT_AE, FakeScp


@pytest.fixture
def rle_image(cxr_dir: Path) -> Path:
    plain = cxr_dir / "plain.dcm"
    make_cxr(plain, rows=64, cols=64)
    return compress(plain, cxr_dir / "rle.dcm", RLELossless)


def test_compressed_image_travels_unchanged_when_the_peer_accepts_its_syntax(
    orthanc: OrthancServer, rle_image: Path
) -> None:
    outcome = store(orthanc.dicom_node, [rle_image], calling_ae=RADDRAFT_AE, timeout=10)
    assert outcome.instances[0].transfer_syntax == RLELossless
    sop_uid = outcome.stored[0]
    orthanc_id = orthanc.lookup(sop_uid)[0]["ID"]
    assert orthanc.rest(f"/instances/{orthanc_id}/metadata/TransferSyntax") == RLELossless.encode()


def test_compressed_image_is_decompressed_for_a_peer_taking_only_uncompressed(
    fake_scp: Callable[..., FakeScp], rle_image: Path
) -> None:
    scp = fake_scp()  # pynetdicom's default syntaxes: uncompressed only
    outcome = store(scp.node, [rle_image], calling_ae=RADDRAFT_AE, timeout=10)
    assert outcome.instances[0].status == 0
    received = scp.received[0]
    assert received.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert np.array_equal(received.pixel_array, dcmread(rle_image).pixel_array)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "pacs.crt", folder / "pacs.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_scp(tmp_path: Path) -> Iterator[tuple[DicomNode, Path, list[str]]]:
    """A pynetdicom storage SCP behind TLS (PS3.15 B.1); yields its node, cert, stored UIDs."""
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    stored: list[str] = []

    def _on_store(event: evt.Event) -> int:
        stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="TLSPACS")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.88.34")
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        ssl_context=server_context,
        evt_handlers=[(evt.EVT_C_STORE, _on_store)],
    )
    assert server is not None
    yield DicomNode("TLSPACS", "127.0.0.1", port), cert, stored
    server.shutdown()


def test_store_over_tls(tls_scp: tuple[DicomNode, Path, list[str]], cxr_dir: Path) -> None:
    from tests.peers.conftest import make_sr

    node, cert, stored = tls_scp
    sr = make_sr(make_cxr(rows=64, cols=64))
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    outcome = store(node, [sr], calling_ae=RADDRAFT_AE, tls=client, timeout=10)
    assert outcome.stored == stored == [sr.SOPInstanceUID]


def test_tls_peer_with_an_untrusted_certificate_fails_permanently(
    tls_scp: tuple[DicomNode, Path, list[str]],
) -> None:
    from tests.peers.conftest import make_sr

    node, _, stored = tls_scp
    sr = make_sr(make_cxr(rows=64, cols=64))
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # system CAs only
    with pytest.raises(PermanentExportError, match="CERTIFICATE_VERIFY_FAILED"):
        store(node, [sr], calling_ae=RADDRAFT_AE, tls=client, timeout=30)
    assert stored == []


def test_tls_to_a_peer_that_is_down_is_transient(cxr_dir: Path, tmp_path: Path) -> None:
    from tests.peers.conftest import make_sr

    cert, _ = _self_signed(tmp_path)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    node = DicomNode("TLSPACS", "127.0.0.1", free_port())
    with pytest.raises(TransientExportError, match="Connection refused"):
        store(node, [make_sr(make_cxr(rows=64, cols=64))], calling_ae=RADDRAFT_AE, tls=client)

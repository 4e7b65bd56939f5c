"""Peers for the outbound tests: real Orthanc, a real MLLP listener, a real HTTP server as FHIR
server, small pynetdicom SCPs that answer as told, raw sockets.

Also minimal but valid results to send: a TID 1500 Comprehensive 3D SR and a GSPS built with
highdicom on a synthetic DX image (``tests/dicom_factory.py``).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
)
from pynetdicom.transport import ThreadedAssociationServer

from raddraft.settings import DicomNode
from tests.conftest import free_port
from tests.dicom_factory import new_uid
from tests.fhir_server import fhir_server  # noqa: F401  (fixture)
from tests.mllp_listener import listener  # noqa: F401  (fixture)
from tests.orthanc import orthanc, orthanc_factory  # noqa: F401  (fixtures)

RADDRAFT_AE = "RADDRAFT"

STORAGE_CLASSES = (
    DigitalXRayImageStorageForPresentation,
    ComputedRadiographyImageStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
)


def make_sr(image: Dataset) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 measurement report with one planar ROI (a box) on ``image``, in its study."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=new_uid(), name="RadDraft"
        ),
    )
    box = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(
            [[10.0, 10.0], [60.0, 10.0], [60.0, 50.0], [10.0, 50.0], [10.0, 10.0]]
        ),
        source_image=hd.sr.SourceImageForRegion.from_source_image(image),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier="finding 1"),
        referenced_region=box,
        finding_type=codes.SCT.Nodule,
        algorithm_id=hd.sr.AlgorithmIdentification(name="RadDraft test", version="0"),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("36643-5", "LN", "XR Chest 2 Views"),
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[image],
        content=report,
        series_instance_uid=new_uid(),
        series_number=900,
        sop_instance_uid=new_uid(),
        instance_number=1,
        manufacturer="RadDraft",
    )


def make_gsps(image: Dataset) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A GSPS with one box and label on ``image``, in its study."""
    layer = hd.pr.GraphicLayer(layer_name="AI", order=1, description="RadDraft draft")
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[image],
        graphic_layer=layer,
        graphic_objects=[
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array(
                    [[10.0, 10.0], [60.0, 10.0], [60.0, 50.0], [10.0, 50.0], [10.0, 10.0]]
                ),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            )
        ],
        text_objects=[
            hd.pr.TextObject(
                text_value="nodule (AI draft, unverified)",
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=(10.0, 52.0, 120.0, 64.0),
            )
        ],
    )
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[image],
        series_instance_uid=new_uid(),
        series_number=901,
        sop_instance_uid=new_uid(),
        instance_number=1,
        manufacturer="RadDraft",
        manufacturer_model_name="RadDraft",
        software_versions="0.1.0",
        device_serial_number="1",
        content_label="AI_DRAFT",
        graphic_layers=[layer],
        graphic_annotations=[annotation],
    )


@dataclass
class FakeScp:
    """A pynetdicom storage SCP on a free loopback port that answers C-STORE as told."""

    ae_title: str = "FAKEPACS"
    status: int = 0x0000
    delay: float = 0.0
    sop_classes: tuple[str, ...] = STORAGE_CLASSES
    require_called_aet: bool = False
    port: int = field(default_factory=free_port)
    received: list[Dataset] = field(default_factory=list)
    arrival_times: list[float] = field(default_factory=list)
    server: ThreadedAssociationServer = field(init=False, repr=False)

    def _on_store(self, event: evt.Event) -> int | Dataset:
        if self.delay:
            time.sleep(self.delay)
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        self.arrival_times.append(time.monotonic())
        if self.status in (0x0000,):
            return self.status
        answer = Dataset()
        answer.Status = self.status
        answer.ErrorComment = f"test SCP says 0x{self.status:04X}"
        return answer

    def start(self) -> FakeScp:
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = self.require_called_aet
        ae.network_timeout = 30
        for sop_class in self.sop_classes:
            ae.add_supported_context(sop_class)
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        assert server is not None
        self.server = server
        return self

    def stop(self) -> None:
        self.server.shutdown()

    @property
    def node(self) -> DicomNode:
        return DicomNode(self.ae_title, "127.0.0.1", self.port)

    @property
    def received_uids(self) -> set[str]:
        return {str(ds.SOPInstanceUID) for ds in self.received}


@pytest.fixture
def fake_scp() -> Iterator[Callable[..., FakeScp]]:
    """Start :class:`FakeScp` servers with the given fields; all are shut down afterwards."""
    servers: list[FakeScp] = []

    def make(**kwargs: object) -> FakeScp:
        server = FakeScp(**kwargs).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


class RawPeer:
    """A TCP listener that answers every A-ASSOCIATE-RQ with a fixed reply, or not at all.

    ``reply=None`` reads the request and stays silent (a peer that never answers);
    otherwise the reply PDU bytes are sent, e.g. :func:`associate_rj`.
    """

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.port = free_port()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            conn.settimeout(5)
            try:
                conn.recv(65536)
                if self.reply is not None:
                    conn.sendall(self.reply)
            except OSError:
                pass

    def node(self, ae_title: str = "RAWPEER") -> DicomNode:
        return DicomNode(ae_title, "127.0.0.1", self.port)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for conn in self._conns:
            conn.close()
        self._thread.join(2)


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): type 0x03, length 4, result, source, reason."""
    return struct.pack(">BBIBBBB", 0x03, 0x00, 4, 0x00, result, source, reason)


@pytest.fixture
def raw_peer() -> Iterator[Callable[[bytes | None], RawPeer]]:
    peers: list[RawPeer] = []

    def make(reply: bytes | None) -> RawPeer:
        peer = RawPeer(reply)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture
def cxr_dir(tmp_path: Path) -> Path:
    path = tmp_path / "cxr"
    path.mkdir()
    return path

"""C-STORE SCU export: to a real Orthanc, and failure classification against scripted peers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from peers.dicom_scu import (
    PermanentExportError,
    ScuError,
    StoreOutcome,
    TransientExportError,
    classify_status,
    store,
)
from raddraft.settings import DicomNode
from tests.dicom_factory import make_cxr
from tests.orthanc import OrthancServer
from tests.peers.conftest import RADDRAFT_AE, FakeScp, RawPeer, associate_rj, make_gsps, make_sr


@pytest.fixture
def results(cxr_dir: Path) -> tuple[Dataset, Dataset, Dataset, Path]:
    """A DX image (also on disk), an SR and a GSPS on it."""
    path = cxr_dir / "pa.dcm"
    image = make_cxr(path, patient_id="SCU001", accession="ACCSCU1")
    return image, make_sr(image), make_gsps(image), path


def test_sr_gsps_and_image_reach_orthanc_in_the_source_study(
    orthanc: OrthancServer, results: tuple[Dataset, Dataset, Dataset, Path]
) -> None:
    image, sr, gsps, path = results
    outcome = store(orthanc.dicom_node, [path, sr, gsps], calling_ae=RADDRAFT_AE, timeout=10)

    assert isinstance(outcome, StoreOutcome)
    assert [i.status for i in outcome.instances] == [0, 0, 0]
    assert outcome.stored == [image.SOPInstanceUID, sr.SOPInstanceUID, gsps.SOPInstanceUID]
    assert not outcome.warnings
    held = orthanc.study_instances(image.StudyInstanceUID)
    assert {i["MainDicomTags"]["SOPInstanceUID"] for i in held} == {
        image.SOPInstanceUID,
        sr.SOPInstanceUID,
        gsps.SOPInstanceUID,
    }
    sr_tags = orthanc.instance_tags(sr.SOPInstanceUID)
    assert sr_tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr_tags["StudyInstanceUID"] == image.StudyInstanceUID
    gsps_tags = orthanc.instance_tags(gsps.SOPInstanceUID)
    assert gsps_tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.11.1"
    assert gsps_tags["PatientID"] == "SCU001"
    # The calling AE title is what Orthanc records as the sender.
    sr_id = orthanc.lookup(sr.SOPInstanceUID)[0]["ID"]
    assert orthanc.rest(f"/instances/{sr_id}/metadata/RemoteAET") == b"RADDRAFT"


def test_orthanc_down_is_transient_and_export_succeeds_once_it_is_back(
    orthanc: OrthancServer, results: tuple[Dataset, Dataset, Dataset, Path]
) -> None:
    image, sr, gsps, _ = results
    orthanc.stop()
    with pytest.raises(TransientExportError) as failure:
        store(orthanc.dicom_node, [sr, gsps], calling_ae=RADDRAFT_AE, timeout=30)
    assert failure.value.transient and failure.value.status is None
    assert "could not connect" in str(failure.value)

    orthanc.start()
    outcome = store(orthanc.dicom_node, [sr, gsps], calling_ae=RADDRAFT_AE, timeout=10)
    assert len(outcome.stored) == 2
    assert orthanc.study_instance_uids(image.StudyInstanceUID) == {
        sr.SOPInstanceUID,
        gsps.SOPInstanceUID,
    }


def test_orthanc_rejects_wrong_called_ae_permanently(
    orthanc_factory: Callable[..., OrthancServer], results: tuple[Dataset, Dataset, Dataset, Path]
) -> None:
    pacs = orthanc_factory(check_called_aet=True)
    wrong = DicomNode("NOTORTHANC", "127.0.0.1", pacs.dicom_port)
    with pytest.raises(PermanentExportError) as failure:
        store(wrong, [results[1]], calling_ae=RADDRAFT_AE, timeout=30)
    assert not failure.value.transient
    assert "Called AE title not recognised" in str(failure.value)
    assert pacs.instance_count() == 0


@pytest.mark.parametrize(
    ("result", "source", "reason", "expected"),
    [
        (1, 1, 7, PermanentExportError),  # rejected-permanent, service user, called AE unknown
        (1, 1, 3, PermanentExportError),  # rejected-permanent, calling AE not recognised
        (2, 1, 1, TransientExportError),  # rejected-transient, no reason given
        (2, 3, 1, TransientExportError),  # rejected-transient, temporary congestion
        (1, 3, 2, TransientExportError),  # "permanent" but local limit exceeded: transient
    ],
)
def test_association_rejection_follows_the_result_field(
    raw_peer: Callable[[bytes | None], RawPeer],
    results: tuple[Dataset, Dataset, Dataset, Path],
    result: int,
    source: int,
    reason: int,
    expected: type[ScuError],
) -> None:
    peer = raw_peer(associate_rj(result, source, reason))
    with pytest.raises(ScuError) as failure:
        store(peer.node(), [results[1]], calling_ae=RADDRAFT_AE, timeout=30)
    assert type(failure.value) is expected
    assert "association rejected" in str(failure.value)


@pytest.mark.parametrize(
    ("result", "source", "reason", "expected"),
    [(1, 1, 7, PermanentExportError), (2, 1, 1, TransientExportError)],
)
def test_a_rejection_that_closes_the_connection_first_is_still_a_rejection(
    raw_peer: Callable[[bytes | None], RawPeer],
    result: int,
    source: int,
    reason: int,
    expected: type[ScuError],
) -> None:
    """pynetdicom's requesting thread checks the connection after sending the A-ASSOCIATE-RQ;
    when the RJ has come back and the transport is closed by then, it aborts instead of reading
    the rejection. Held up in EVT_REQUESTED (on that thread), it loses that race every time; the
    rejection must still be classified by its result, never retried as a lost answer."""
    from pynetdicom import build_context, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from peers.dicom_scu import _associate

    peer = raw_peer(associate_rj(result, source, reason))
    with (
        pytest.raises(ScuError) as failure,
        _associate(
            peer.node(),
            calling_ae=RADDRAFT_AE,
            contexts=[build_context(Verification)],
            timeout=30,
            tls=None,
            transient=TransientExportError,
            permanent=PermanentExportError,
            handlers=[(evt.EVT_REQUESTED, lambda event: time.sleep(0.5))],
        ),
    ):
        pass
    assert type(failure.value) is expected
    assert "association rejected" in str(failure.value)


def test_peer_that_never_answers_times_out_as_transient(
    raw_peer: Callable[[bytes | None], RawPeer], results: tuple[Dataset, Dataset, Dataset, Path]
) -> None:
    peer = raw_peer(None)
    started = time.monotonic()
    with pytest.raises(TransientExportError, match="no A-ASSOCIATE response"):
        store(peer.node(), [results[1]], calling_ae=RADDRAFT_AE, timeout=1)
    assert time.monotonic() - started < 5


def test_pynetdicom_scp_requiring_its_called_ae_rejects_permanently(
    fake_scp: Callable[..., FakeScp], results: tuple[Dataset, Dataset, Dataset, Path]
) -> None:
    scp = fake_scp(require_called_aet=True)
    wrong = DicomNode("SOMEONEELSE", "127.0.0.1", scp.port)
    with pytest.raises(PermanentExportError):
        store(wrong, [results[1]], calling_ae=RADDRAFT_AE, timeout=30)
    assert scp.received == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0xA700, TransientExportError),  # out of resources
        (0xA7FF, TransientExportError),
        (0x0110, TransientExportError),  # processing failure
        (0xA900, PermanentExportError),  # data set does not match SOP class
        (0xC000, PermanentExportError),  # cannot understand
        (0x0122, PermanentExportError),  # SOP class not supported
    ],
)
def test_failure_status_classification(
    fake_scp: Callable[..., FakeScp],
    results: tuple[Dataset, Dataset, Dataset, Path],
    status: int,
    expected: type[ScuError],
) -> None:
    _, sr, gsps, _ = results
    scp = fake_scp(status=status)
    with pytest.raises(ScuError) as failure:
        store(scp.node, [sr, gsps], calling_ae=RADDRAFT_AE, timeout=30)
    error = failure.value
    assert type(error) is expected
    assert error.status == status
    # The first failure stops the association: the GSPS was never sent.
    assert scp.received_uids == {sr.SOPInstanceUID}
    assert isinstance(error.outcome, StoreOutcome)
    assert [i.status for i in error.outcome.instances] == [status]
    assert f"test SCP says 0x{status:04X}" in str(error)


@pytest.mark.parametrize("status", [0xB000, 0xB006, 0xB007])
def test_warning_statuses_count_as_stored_and_are_recorded(
    fake_scp: Callable[..., FakeScp],
    results: tuple[Dataset, Dataset, Dataset, Path],
    status: int,
) -> None:
    _, sr, gsps, _ = results
    scp = fake_scp(status=status)
    outcome = store(scp.node, [sr, gsps], calling_ae=RADDRAFT_AE, timeout=30)
    assert outcome.stored == [sr.SOPInstanceUID, gsps.SOPInstanceUID]
    assert [w.status for w in outcome.warnings] == [status, status]
    assert scp.received_uids == {sr.SOPInstanceUID, gsps.SOPInstanceUID}


def test_unsupported_sop_class_is_permanent_and_nothing_is_sent(
    fake_scp: Callable[..., FakeScp], results: tuple[Dataset, Dataset, Dataset, Path]
) -> None:
    image, sr, gsps, _ = results
    # This peer takes images and SR but not GSPS: refuse before sending anything.
    scp = fake_scp(sop_classes=(image.SOPClassUID, sr.SOPClassUID))
    with pytest.raises(PermanentExportError, match="Grayscale Softcopy") as failure:
        store(scp.node, [sr, gsps], calling_ae=RADDRAFT_AE, timeout=30)
    assert failure.value.status == 0x0122
    assert scp.received == []


def test_no_accepted_context_at_all_is_permanent(
    fake_scp: Callable[..., FakeScp], results: tuple[Dataset, Dataset, Dataset, Path]
) -> None:
    scp = fake_scp(sop_classes=(CTImageStorage,))
    with pytest.raises(PermanentExportError, match="no proposed presentation context"):
        store(scp.node, [results[1]], calling_ae=RADDRAFT_AE, timeout=30)


def test_proposes_contexts_only_for_the_classes_sent(
    fake_scp: Callable[..., FakeScp], results: tuple[Dataset, Dataset, Dataset, Path]
) -> None:
    _, sr, gsps, _ = results
    scp = fake_scp()
    proposed: list[str] = []
    from pynetdicom import evt

    def _on_request(event: evt.Event) -> None:
        proposed.extend(str(cx.abstract_syntax) for cx in event.assoc.requestor.requested_contexts)

    scp.server.bind(evt.EVT_REQUESTED, _on_request)
    store(scp.node, [sr, gsps], calling_ae=RADDRAFT_AE, timeout=30)
    assert sorted(proposed) == sorted([str(sr.SOPClassUID), str(gsps.SOPClassUID)])


def test_no_c_store_response_in_time_is_transient(
    fake_scp: Callable[..., FakeScp], results: tuple[Dataset, Dataset, Dataset, Path]
) -> None:
    scp = fake_scp(delay=3.0)
    started = time.monotonic()
    with pytest.raises(TransientExportError, match="no C-STORE response"):
        store(scp.node, [results[1]], calling_ae=RADDRAFT_AE, timeout=1)
    assert time.monotonic() - started < 3


def test_empty_batch_opens_no_association() -> None:
    outcome = store(DicomNode("NOBODY", "127.0.0.1", 9), [], calling_ae=RADDRAFT_AE)
    assert outcome.instances == []


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (0x0000, "success"),
        (0x0001, "warning"),
        (0xB000, "warning"),
        (0x0111, "warning"),
        (0xFF00, "pending"),
        (0xFE00, "cancel"),
        (0xA700, "transient"),
        (0xA702, "transient"),
        (0x0213, "transient"),
        (0xA900, "permanent"),
        (0xA801, "permanent"),
        (0xC123, "permanent"),
        (0x0122, "permanent"),
        (0x0124, "permanent"),
        (0x0211, "permanent"),
    ],
)
def test_classify_status_table(status: int, kind: str) -> None:
    assert classify_status(status) == kind

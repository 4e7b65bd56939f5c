"""The sender interface against real peers: Orthanc (C-STORE), an MLLP listener, an HTTP server.

Each target returns a Delivery with the identifiers in sending order; a peer that is down
raises a transient error and one that refuses raises a permanent one, both saying what was
delivered before the failure and what failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

import peers
from peers import (
    DeliveryError,
    DicomStorePermanentError,
    DicomStoreSender,
    DicomStoreTransientError,
    FhirConflictError,
    FhirPermanentError,
    FhirTransientError,
    MllpPermanentError,
    MllpTransientError,
    Outbound,
    PermanentDeliveryError,
    Sender,
    TransientDeliveryError,
    sender_for,
)
from peers.dicom_scu import PermanentExportError, TransientExportError
from raddraft.destinations import (
    DicomTarget,
    FhirTarget,
    MllpTarget,
    SmtpTarget,
    StowTarget,
    export_target,
    export_targets,
)
from raddraft.settings import DicomNode, Settings
from report_drafts.builders import oru_r01
from report_drafts.content import ReportContent
from tests.conftest import free_port
from tests.dicom_factory import make_cxr
from tests.fhir_server import FhirServer
from tests.mllp_listener import Listener
from tests.orthanc import OrthancServer
from tests.peers.conftest import make_gsps, make_sr

CALLING_AE = "RDTARGETS"


@pytest.fixture
def settings() -> Settings:
    return Settings(ae_title=CALLING_AE, tls_cert=None, tls_key=None)


# --------------------------------------------------------------------------------------------
# The registry


def test_sender_for_knows_the_five_kinds(settings: Settings) -> None:
    assert set(peers.SENDERS) == {DicomTarget, MllpTarget, FhirTarget, StowTarget, SmtpTarget}
    made = {
        "dicom": sender_for(DicomTarget.parse("PACS@127.0.0.1:11113"), settings),
        "hl7": sender_for(MllpTarget.parse("127.0.0.1:2575"), settings),
        "fhir": sender_for(FhirTarget("http://127.0.0.1:8080/fhir"), settings),
        "stow": sender_for(StowTarget("http://127.0.0.1:8042/dicom-web"), settings),
        "smtp": sender_for(SmtpTarget.parse("127.0.0.1:2525"), settings),
    }
    for kind, sender in made.items():
        assert isinstance(sender, Sender)
        assert sender.kind == kind
    assert made["dicom"].destination == "PACS@127.0.0.1:11113"
    assert made["hl7"].destination == "127.0.0.1:2575"
    assert made["fhir"].destination == "http://127.0.0.1:8080/fhir"
    assert made["stow"].destination == "http://127.0.0.1:8042/dicom-web"
    assert made["smtp"].destination == "127.0.0.1:2525"
    assert isinstance(made["dicom"], DicomStoreSender)
    assert made["dicom"].calling_ae == CALLING_AE  # the settings' AE title is who calls


def test_sender_for_rejects_an_unknown_target(settings: Settings) -> None:
    with pytest.raises(ValueError, match="no sender for str"):
        sender_for("http://registry/xds", settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("parse", "destination"),
    [
        (DicomTarget.parse, "no-ae-title"),
        (MllpTarget.parse, "ris"),
        (StowTarget, "PACS@host:104"),
        (SmtpTarget.parse, "relay:smtp"),
    ],
)
def test_a_malformed_destination_is_refused_when_typed(
    parse: Callable[[str], object], destination: str
) -> None:
    with pytest.raises(ValueError):
        parse(destination)


def test_export_destinations_are_typed_once(settings: Settings) -> None:
    configured = Settings(
        destinations="PACS@127.0.0.1:104,ARCH@127.0.0.1:11112",  # type: ignore[arg-type]
        stow_destinations="https://pacs.example.org/dicom-web",  # type: ignore[arg-type]
    )
    targets = export_targets(configured)
    assert [type(t) for t in targets] == [DicomTarget, DicomTarget, StowTarget]
    assert [str(t) for t in targets] == [
        "PACS@127.0.0.1:104",
        "ARCH@127.0.0.1:11112",
        "https://pacs.example.org/dicom-web",
    ]
    # A job row keeps the text; it is parsed back into the same typed target.
    assert [export_target(str(t)) for t in targets] == list(targets)
    assert {t.carries for t in targets} == {("sr", "gsps", "kos")}
    assert MllpTarget.carries == ("hl7",) and FhirTarget.carries == ("fhir",)


def test_error_classes_line_up() -> None:
    for transient in (DicomStoreTransientError, MllpTransientError, FhirTransientError):
        assert issubclass(transient, TransientDeliveryError)
    for permanent in (DicomStorePermanentError, MllpPermanentError, FhirPermanentError):
        assert issubclass(permanent, PermanentDeliveryError)
    assert issubclass(TransientDeliveryError, DeliveryError)
    assert issubclass(PermanentDeliveryError, DeliveryError)
    assert not issubclass(TransientDeliveryError, PermanentDeliveryError)


def test_peers_imports_no_other_raddraft_folder() -> None:
    code = (
        "import json, sys, peers, peers.dicom_scu, peers.mllp\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(json.loads(done.stdout))
    assert "peers" in loaded
    assert not loaded & {"dicom_listener", "report_drafts", "worker", "models"}


# --------------------------------------------------------------------------------------------
# DICOM: C-STORE to Orthanc


@pytest.fixture
def dicom_payload(tmp_path: Path) -> tuple[Dataset, list[Outbound]]:
    """A DX image (the study) and an SR and a GSPS on it, written as outbox files."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    image = make_cxr(tmp_path / "pa.dcm", patient_id="TGT001", accession="ACCTGT1")
    payload = []
    for name, ds in (("sr", make_sr(image)), ("gsps", make_gsps(image))):
        path = outbox / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        payload.append(Outbound(str(ds.SOPInstanceUID), path))
    return image, payload


def test_dicom_target_stores_everything_in_order(
    orthanc: OrthancServer, settings: Settings, dicom_payload: tuple[Dataset, list[Outbound]]
) -> None:
    image, payload = dicom_payload
    target = sender_for(DicomTarget.parse(str(orthanc.dicom_node)), settings)

    delivery = target.send(payload)

    assert delivery.destination == str(orthanc.dicom_node)
    assert delivery.delivered == (payload[0].identifier, payload[1].identifier)
    assert delivery.warnings == ()
    assert delivery.seconds > 0
    assert delivery.detail["statuses"] == [0, 0]
    assert orthanc.study_instance_uids(image.StudyInstanceUID) == {
        payload[0].identifier,
        payload[1].identifier,
    }
    sr_id = orthanc.lookup(payload[0].identifier)[0]["ID"]
    assert orthanc.rest(f"/instances/{sr_id}/metadata/RemoteAET") == CALLING_AE.encode()


def test_dicom_peer_down_is_transient_and_nothing_counts_delivered(
    settings: Settings, dicom_payload: tuple[Dataset, list[Outbound]]
) -> None:
    _, payload = dicom_payload
    node = DicomNode("PACS", "127.0.0.1", free_port())
    target = DicomStoreSender(node, calling_ae=CALLING_AE, timeout=10)

    with pytest.raises(TransientDeliveryError) as failure:
        target.send(payload)

    error = failure.value
    assert isinstance(error, DicomStoreTransientError)
    assert error.delivered == ()
    assert error.failed == tuple(item.identifier for item in payload)
    assert error.status is None
    assert "could not connect" in str(error)
    assert isinstance(error.__cause__, TransientExportError)


def test_dicom_unknown_called_ae_is_permanent(
    orthanc_factory: Callable[..., OrthancServer],
    settings: Settings,
    dicom_payload: tuple[Dataset, list[Outbound]],
) -> None:
    _, payload = dicom_payload
    pacs = orthanc_factory(check_called_aet=True)
    target = sender_for(DicomTarget.parse(f"NOTORTHANC@127.0.0.1:{pacs.dicom_port}"), settings)

    with pytest.raises(PermanentDeliveryError) as failure:
        target.send(payload)

    error = failure.value
    assert isinstance(error, DicomStorePermanentError)
    assert error.delivered == ()
    assert error.failed == tuple(item.identifier for item in payload)
    assert "Called AE title not recognised" in str(error)
    assert isinstance(error.__cause__, PermanentExportError)
    assert pacs.instance_count() == 0


# --------------------------------------------------------------------------------------------
# HL7 v2 over MLLP to a real listener


def _oru(control_id: str) -> str:
    return oru_r01(
        ReportContent(findings_text="Small effusion.", impression="Effusion."),
        patient_id="TGT001",
        patient_name="TEST^TARGET",
        accession="ACCTGT1",
        study_uid="1.2.3.4",
        control_id=control_id,
        sending_app="RADDRAFT",
        sending_facility="GH",
        receiving_app="RIS",
        receiving_facility="GH",
        demo=False,
    )


@pytest.fixture
def hl7_payload(tmp_path: Path) -> list[Outbound]:
    payload = []
    for control_id in ("RDTGT1", "RDTGT2", "RDTGT3"):
        path = tmp_path / f"{control_id}.hl7"
        path.write_text(_oru(control_id), encoding="utf-8")
        payload.append(Outbound(control_id, path))
    return payload


def _control_ids(received: list[str]) -> list[str]:
    return [message.split("\r", 1)[0].split("|")[9] for message in received]


def test_mllp_target_sends_each_message_in_order(
    listener: tuple[Listener, int], settings: Settings, hl7_payload: list[Outbound]
) -> None:
    state, port = listener
    target = sender_for(MllpTarget.parse(f"127.0.0.1:{port}"), settings)

    delivery = target.send(hl7_payload)

    assert delivery.destination == f"127.0.0.1:{port}"
    assert delivery.delivered == ("RDTGT1", "RDTGT2", "RDTGT3")
    assert delivery.detail["acks"] == {"RDTGT1": "AA", "RDTGT2": "AA", "RDTGT3": "AA"}
    assert _control_ids(state.received) == ["RDTGT1", "RDTGT2", "RDTGT3"]


def test_mllp_listener_down_is_transient(settings: Settings, hl7_payload: list[Outbound]) -> None:
    target = sender_for(MllpTarget.parse(f"127.0.0.1:{free_port()}"), settings)

    with pytest.raises(TransientDeliveryError) as failure:
        target.send(hl7_payload)

    error = failure.value
    assert isinstance(error, MllpTransientError)
    assert (error.delivered, error.failed) == ((), ("RDTGT1",))
    assert error.ack_code is None
    assert "cannot connect" in str(error)


@pytest.mark.parametrize(
    ("code", "expected"),
    [("CR", MllpPermanentError), ("AR", MllpTransientError), ("AE", MllpTransientError)],
)
def test_mllp_negative_ack_stops_at_that_message(
    listener: tuple[Listener, int],
    settings: Settings,
    hl7_payload: list[Outbound],
    code: str,
    expected: type[DeliveryError],
) -> None:
    """CR is permanent; AE and AR are retried (the RIS may take the message later)."""
    state, port = listener
    state.script = ["AA", code]
    target = sender_for(MllpTarget.parse(f"127.0.0.1:{port}"), settings)

    with pytest.raises(DeliveryError) as failure:
        target.send(hl7_payload)

    error = failure.value
    assert type(error) is expected
    assert isinstance(error, MllpPermanentError | MllpTransientError)
    assert error.ack_code == code
    assert (error.delivered, error.failed) == (("RDTGT1",), ("RDTGT2",))
    assert _control_ids(state.received) == ["RDTGT1", "RDTGT2"]  # the third was not tried


def test_mllp_ack_for_another_message_is_permanent(
    listener: tuple[Listener, int], settings: Settings, hl7_payload: list[Outbound]
) -> None:
    state, port = listener
    state.script = ["WRONG"]
    with pytest.raises(MllpPermanentError) as failure:
        sender_for(MllpTarget.parse(f"127.0.0.1:{port}"), settings).send(hl7_payload)
    assert (failure.value.delivered, failure.value.failed) == ((), ("RDTGT1",))
    assert "control id" in str(failure.value)


# --------------------------------------------------------------------------------------------
# FHIR RESTful update to a real HTTP server


RESOURCES = (
    {"resourceType": "Observation", "id": "obs-1", "status": "preliminary"},
    {"resourceType": "DiagnosticReport", "id": "rep-1", "status": "preliminary"},
    {"resourceType": "Provenance", "id": "prov-1"},
)


@pytest.fixture
def fhir_payload(tmp_path: Path) -> list[Outbound]:
    payload = []
    for resource in RESOURCES:
        path = tmp_path / f"{resource['resourceType']}-{resource['id']}.json"
        path.write_text(json.dumps(resource, indent=1), encoding="utf-8")
        payload.append(Outbound(f"{resource['resourceType']}/{resource['id']}", path))
    return payload


def test_fhir_target_puts_each_resource_in_order(
    fhir_server: FhirServer, settings: Settings, fhir_payload: list[Outbound]
) -> None:
    target = sender_for(FhirTarget(fhir_server.url), settings)

    delivery = target.send(fhir_payload)

    identifiers = ("Observation/obs-1", "DiagnosticReport/rep-1", "Provenance/prov-1")
    assert delivery.destination == fhir_server.url
    assert delivery.delivered == identifiers
    assert [path for path, _, _ in fhir_server.puts] == [f"/fhir/{i}" for i in identifiers]
    assert {kind for _, kind, _ in fhir_server.puts} == {"application/fhir+json"}
    assert [body for _, _, body in fhir_server.puts] == list(RESOURCES)


def test_fhir_server_down_is_transient(settings: Settings, fhir_payload: list[Outbound]) -> None:
    target = sender_for(FhirTarget(f"http://127.0.0.1:{free_port()}/fhir"), settings)

    with pytest.raises(TransientDeliveryError) as failure:
        target.send(fhir_payload)

    error = failure.value
    assert isinstance(error, FhirTransientError)
    assert (error.delivered, error.failed) == ((), ("Observation/obs-1",))
    assert error.status_code is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, FhirPermanentError),
        (422, FhirPermanentError),
        (429, FhirTransientError),
        (503, FhirTransientError),
    ],
)
def test_fhir_error_status_stops_at_that_resource(
    fhir_server: FhirServer,
    settings: Settings,
    fhir_payload: list[Outbound],
    status: int,
    expected: type[DeliveryError],
) -> None:
    fhir_server.answers["/fhir/DiagnosticReport/rep-1"] = status
    target = sender_for(FhirTarget(fhir_server.url), settings)

    with pytest.raises(DeliveryError) as failure:
        target.send(fhir_payload)

    error = failure.value
    assert type(error) is expected
    assert isinstance(error, FhirPermanentError | FhirTransientError)
    assert error.status_code == status
    assert (error.delivered, error.failed) == (("Observation/obs-1",), ("DiagnosticReport/rep-1",))
    assert f"HTTP {status}" in str(error)
    assert len(fhir_server.puts) == 2  # the Provenance was not tried


def test_fhir_update_names_the_version_it_replaces(
    fhir_server: FhirServer, settings: Settings, fhir_payload: list[Outbound], tmp_path: Path
) -> None:
    """FHIR R4 "Managing Resource Contention": the ETag of each PUT is recorded; an update
    with If-Match the current ETag is taken, one with a stale ETag refused (412, nothing
    changed) as a :class:`FhirConflictError`, and the server keeps every version."""
    target = sender_for(FhirTarget(fhir_server.url), settings)
    first = target.send(fhir_payload)
    report = "DiagnosticReport/rep-1"
    assert first.responses[report] == {"http_status": 201, "etag": 'W/"1"', "if_none_match": "*"}
    final = tmp_path / "final.json"
    final.write_text(
        json.dumps({**RESOURCES[1], "status": "final", "issued": "2026-12-02T10:00:00Z"})
    )

    second = target.send([Outbound(report, final, if_match='W/"1"')])
    assert second.responses[report]["etag"] == 'W/"2"'
    assert fhir_server.if_match[-1] == 'W/"1"'

    # The same body again with the old ETag: the server holds it already (a lost answer).
    again = target.send([Outbound(report, final, if_match='W/"1"')])
    assert again.responses[report]["already_current"] is True

    amended = tmp_path / "amended.json"
    amended.write_text(
        json.dumps({**RESOURCES[1], "status": "amended", "issued": "2026-12-02T11:00:00Z"})
    )
    with pytest.raises(FhirConflictError) as failure:
        target.send([Outbound(report, amended, if_match='W/"1"')])  # stale: not what it holds
    assert failure.value.status_code == 412 and "version conflict" in str(failure.value)
    assert failure.value.responses[report]["if_match"] == 'W/"1"'
    history = fhir_server.history["/fhir/DiagnosticReport/rep-1"]
    assert [v["status"] for v in history] == ["preliminary", "final"]

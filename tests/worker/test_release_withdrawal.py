"""Before sign-off, what leaves follows the release policy; a rejected or superseded draft is
withdrawn where it reached (IOCM rejection note in Orthanc, HL7 X/W at the MLLP listener, FHIR
entered-in-error), in order, as the newest message. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pydicom
import pytest
from hl7apy.parser import parse_message
from pydicom import Dataset
from sqlalchemy.engine import Engine

from peers.mllp import control_id_of
from raddraft.db import session_scope
from raddraft.job_contract import ExportDicom, PushFhir, SendHl7
from raddraft.settings import Settings
from report_drafts import drafting, signoff, trace
from report_drafts.builders import text_lines
from report_drafts.builders.kos_rejection_note import KOS_SOP_CLASS_UID
from report_drafts.content import DRAFT_WARNING
from report_drafts.tables import Role
from report_drafts.users import add_user
from tests.builders.helpers import dciodvfy_ok
from tests.conftest import reload_settings
from tests.drafts.conftest import ALGORITHM, RUN, archive_study, draft_content
from tests.drafts.helpers import make_draft
from tests.fhir_server import FhirServer
from tests.mllp_listener import Listener
from tests.orthanc import OrthancServer
from tests.worker.test_ordering import _jobs, _rows, _run, _sign, _version_pk


@pytest.fixture
def fhir() -> Iterator[FhirServer]:
    server = FhirServer()
    yield server
    server.close()


def _wire(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    monkeypatch.setenv("RADDRAFT_JOB_BACKOFF_SECONDS", "0")
    for name, value in env.items():
        monkeypatch.setenv(f"RADDRAFT_{name.upper()}", value)
    return reload_settings()


def _obr25_obx11(message: str) -> tuple[str, set[str]]:
    parsed = parse_message(message.replace("\n", "\r"), find_groups=True)
    order = parsed.oru_r01_patient_result.oru_r01_order_observation
    return order.obr.obr_25.to_er7(), {o.obx.obx_11.to_er7() for o in order.oru_r01_observation}


def _sr_texts(item: Dataset) -> list[str]:
    """Every TEXT value of an SR content tree (PS3.3 C.17.3)."""
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        found.extend(_sr_texts(child))
    return found


def _reject(engine: Engine, report_id: int, settings: Settings) -> int:
    with session_scope(engine) as session:
        user, _ = add_user(session, "rad", Role.radiologist, display_name="House^Gregory")
        signoff.open_report(session, report_id, user)
        current = signoff.get_report(session, report_id).current_version
        row = signoff.reject(
            session,
            report_id,
            user,
            expected_version=current,
            reason="the effusion is on the right",
            settings=settings,
        )
        return row.id


def test_default_policy_sends_pacs_objects_and_holds_the_ris_until_sign_off(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
    fhir: FhirServer,
) -> None:
    ris, ris_port = listener
    wired = _wire(
        monkeypatch,
        destinations="PACS@127.0.0.1:1",
        ris_mllp=f"127.0.0.1:{ris_port}",
        fhir_server_url=fhir.url,
    )
    assert (
        wired.release_unsigned_pacs,
        wired.release_unsigned_hl7,
        wired.release_unsigned_fhir,
    ) == ("send", "hold", "hold")
    report_id, _study = make_draft(engine, wired)
    draft_pk = _version_pk(engine, report_id, 1)
    assert set(_jobs(engine, draft_pk)) == {ExportDicom.TASK}
    assert {r.state for r in _rows(engine, draft_pk, "sr")} == {"pending"}
    (p_row,) = _rows(engine, draft_pk, "hl7")
    assert p_row.state == "held" and "RADDRAFT_RELEASE_UNSIGNED_HL7" in (p_row.last_error or "")
    assert {r.state for r in _rows(engine, draft_pk, "fhir")} == {"held"}

    # Every unsigned object, whatever its kind, says it is an unverified AI draft.
    out = wired.data_dir / "outbox"
    (sr_row,) = _rows(engine, draft_pk, "sr")
    sr = pydicom.dcmread(out / sr_row.path)
    assert sr.VerificationFlag == "UNVERIFIED" and DRAFT_WARNING in _sr_texts(sr)
    (gsps_row,) = _rows(engine, draft_pk, "gsps")
    gsps = pydicom.dcmread(out / gsps_row.path)
    texts = [
        t.UnformattedTextValue
        for a in gsps.GraphicAnnotationSequence
        for t in a.get("TextObjectSequence", [])
    ]
    assert DRAFT_WARNING.upper() in texts
    assert DRAFT_WARNING in text_lines((out / p_row.path).read_text())
    (dr_row,) = [r for r in _rows(engine, draft_pk, "fhir") if "DiagnosticReport" in r.identifier]
    assert DRAFT_WARNING in json.loads((out / dr_row.path).read_text())["conclusion"]

    signed_pk = _sign(engine, report_id, wired)
    signed_jobs = _jobs(engine, signed_pk)
    assert {SendHl7.TASK, PushFhir.TASK} <= set(signed_jobs)
    assert _run(signed_jobs[SendHl7.TASK]) == "done"
    assert [_obr25_obx11(m)[0] for m in ris.received] == ["F"]
    (p_row,) = _rows(engine, draft_pk, "hl7")
    assert (p_row.state, p_row.replaced_by_version) == ("obsolete", 2)


def test_a_rejected_draft_is_withdrawn_where_it_was_sent(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    orthanc: OrthancServer,
    listener: tuple[Listener, int],
    fhir: FhirServer,
) -> None:
    ris, ris_port = listener
    wired = _wire(
        monkeypatch,
        destinations=str(orthanc.dicom_node),
        ris_mllp=f"127.0.0.1:{ris_port}",
        fhir_server_url=fhir.url,
        release_unsigned_hl7="send",
        release_unsigned_fhir="send",
    )
    report_id, study = make_draft(engine, wired)
    draft_pk = _version_pk(engine, report_id, 1)
    assert [_run(j) for j in _jobs(engine, draft_pk).values()] == ["done"] * 3
    sent_uids = {r.identifier for kind in ("sr", "gsps") for r in _rows(engine, draft_pk, kind)}

    withdrawal_pk = _reject(engine, report_id, wired)
    withdrawal_jobs = _jobs(engine, withdrawal_pk)
    assert set(withdrawal_jobs) == {ExportDicom.TASK, SendHl7.TASK, PushFhir.TASK}
    assert [_run(j) for j in withdrawal_jobs.values()] == ["done"] * 3

    # PACS: the IOCM rejection note, referencing what was sent, next to it in Orthanc.
    (kos_row,) = _rows(engine, withdrawal_pk, "kos")
    assert kos_row.state == "sent" and kos_row.response["dicom_status"] == "0x0000"
    note_path = wired.data_dir / "outbox" / kos_row.path
    dciodvfy_ok(note_path)
    note = pydicom.dcmread(note_path)
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
    referenced = {
        item.ReferencedSOPInstanceUID
        for s in note.CurrentRequestedProcedureEvidenceSequence
        for series in s.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == sent_uids
    assert orthanc.instance_tags(kos_row.identifier)["SOPClassUID"] == KOS_SOP_CLASS_UID
    assert orthanc.study_instance_uids(study.study_instance_uid) >= sent_uids | {kos_row.identifier}
    # RIS: P, then its withdrawal (OBR-25 X, OBX-11 W), the newest message.
    assert [_obr25_obx11(m) for m in ris.received] == [("P", {"P"}), ("X", {"W"})]
    assert "WITHDRAWN: AI draft rejected by radiologist" in ris.received[1]
    # FHIR: the same DiagnosticReport, now entered-in-error, If-Match the preliminary.
    (path,) = [p for p in fhir.history if p.startswith("/fhir/DiagnosticReport/")]
    assert [v["status"] for v in fhir.history[path]] == ["preliminary", "entered-in-error"]
    assert fhir.if_match[-1] == FhirServer.etag(1)

    with session_scope(engine) as session:
        (found,) = trace(session, kos_row.identifier)
        assert (found.matched, found.version, found.state) == ("kos", 2, "rejected")
        acks = [a["response"] for a in found.attempts if a["kind"] == "hl7"]
        assert acks and acks[0]["ack_code"] == "AA"
        assert acks[0]["ack_for"] == control_id_of(ris.received[1])
        (by_ack,) = trace(session, acks[0]["ack_control_id"])
        assert by_ack.version == 2


def test_nothing_is_withdrawn_where_nothing_was_delivered(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
) -> None:
    ris, ris_port = listener
    wired = _wire(monkeypatch, ris_mllp=f"127.0.0.1:{ris_port}")  # HL7 P held by default
    report_id, _study = make_draft(engine, wired)
    withdrawal_pk = _reject(engine, report_id, wired)
    assert _run(_jobs(engine, withdrawal_pk)[SendHl7.TASK]) == "done"
    assert ris.received == []
    (row,) = _rows(engine, withdrawal_pk, "hl7")
    assert row.state == "obsolete" and "no withdrawal needed" in (row.last_error or "")


def test_a_superseded_draft_is_withdrawn_and_the_new_draft_sent(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
) -> None:
    ris, ris_port = listener
    wired = _wire(monkeypatch, ris_mllp=f"127.0.0.1:{ris_port}", release_unsigned_hl7="send")
    old_report, study = make_draft(engine, wired)
    assert _run(_jobs(engine, _version_pk(engine, old_report, 1))[SendHl7.TASK]) == "done"
    later = archive_study(engine, wired, study_uid=study.study_instance_uid, version_number=2)
    with session_scope(engine) as session:
        new_version = drafting.record_draft(
            session,
            study_version_pk=later.study_version_pk,
            content=draft_content(later.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=wired,
        )
        new_pk = new_version.id
    withdrawal_pk = _version_pk(engine, old_report, 2)
    assert _run(_jobs(engine, withdrawal_pk)[SendHl7.TASK]) == "done"
    assert _run(_jobs(engine, new_pk)[SendHl7.TASK]) == "done"
    assert [_obr25_obx11(m)[0] for m in ris.received] == ["P", "X", "P"]
    assert "superseded by a newer draft" in ris.received[1]
    expected = [
        _rows(engine, pk, "hl7")[0].identifier
        for pk in (_version_pk(engine, old_report, 1), withdrawal_pk, new_pk)
    ]
    assert [control_id_of(m) for m in ris.received] == expected


def test_no_preliminary_follows_a_signed_report_of_the_same_study(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
) -> None:
    """Images arriving after sign-off open a new study version and a new draft: the RIS shows
    the final for that accession, so the new draft's ORU P is held even under ``send``."""
    ris, ris_port = listener
    wired = _wire(monkeypatch, ris_mllp=f"127.0.0.1:{ris_port}", release_unsigned_hl7="send")
    report_id, study = make_draft(engine, wired)
    assert _run(_jobs(engine, _version_pk(engine, report_id, 1))[SendHl7.TASK]) == "done"
    signed_pk = _sign(engine, report_id, wired)
    assert _run(_jobs(engine, signed_pk)[SendHl7.TASK]) == "done"
    later = archive_study(engine, wired, study_uid=study.study_instance_uid, version_number=2)
    with session_scope(engine) as session:
        new_pk = drafting.record_draft(
            session,
            study_version_pk=later.study_version_pk,
            content=draft_content(later.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=wired,
        ).id
    assert SendHl7.TASK not in _jobs(engine, new_pk)
    (row,) = _rows(engine, new_pk, "hl7")
    assert row.state == "held" and "no preliminary follows" in (row.last_error or "")
    assert [_obr25_obx11(m)[0] for m in ris.received] == ["P", "F"]

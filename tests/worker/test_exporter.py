"""The exporter's three jobs as one delivery: a real draft's outbox to Orthanc, an MLLP
listener and an HTTP FHIR server, each object's attempt recorded on its sent-object row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from raddraft import job_contract, jobs
from raddraft.db import session_scope
from raddraft.destinations import DicomTarget, FhirTarget, MllpTarget
from raddraft.job_contract import ExportDicom, PushFhir, SendHl7
from raddraft.settings import DicomNode, Settings
from report_drafts import drafting
from report_drafts.tables import SentObject
from tests.conftest import free_port, reload_settings
from tests.drafts.conftest import ALGORITHM, RUN, archive_study, draft_content
from tests.fhir_server import FhirServer
from tests.mllp_listener import Listener
from tests.orthanc import OrthancServer
from worker import exporter
from worker.errors import PermanentError, TransientError

EXPORT_DICOM, SEND_HL7, PUSH_FHIR = ExportDicom.TASK, SendHl7.TASK, PushFhir.TASK
HANDLERS: dict[str, Any] = {
    EXPORT_DICOM: exporter.export_dicom_job,
    SEND_HL7: exporter.send_hl7_job,
    PUSH_FHIR: exporter.push_fhir_job,
}


@pytest.fixture
def fhir() -> Iterator[FhirServer]:
    server = FhirServer()
    yield server
    server.close()


def _wire(
    monkeypatch: pytest.MonkeyPatch, pacs: DicomNode, ris_port: int, fhir_url: str
) -> Settings:
    monkeypatch.setenv("RADDRAFT_DESTINATIONS", str(pacs))
    monkeypatch.setenv("RADDRAFT_RIS_MLLP", f"127.0.0.1:{ris_port}")
    monkeypatch.setenv("RADDRAFT_FHIR_SERVER_URL", fhir_url)
    # These tests send the draft everywhere; tests/worker/test_ordering.py tests the holds.
    monkeypatch.setenv("RADDRAFT_RELEASE_UNSIGNED_HL7", "send")
    monkeypatch.setenv("RADDRAFT_RELEASE_UNSIGNED_FHIR", "send")
    return reload_settings()


def _draft(engine: Engine, settings: Settings) -> tuple[int, dict[str, jobs.Job]]:
    """A drafted report; its version's pk and its outbound jobs by task."""
    study = archive_study(engine, settings)
    with session_scope(engine) as session:
        version = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=draft_content(study.sop_instance_uids[0]),
            run=RUN,
            algorithm=ALGORITHM,
            settings=settings,
        )
        made = session.scalars(select(jobs.Job).where(jobs.Job.task.in_(HANDLERS))).all()
        session.expunge_all()
        return version.id, {job.task: job for job in made}


def _rows(engine: Engine, version_pk: int) -> list[SentObject]:
    with session_scope(engine) as session:
        rows = session.scalars(
            select(SentObject)
            .where(SentObject.report_version_pk == version_pk)
            .order_by(SentObject.id)
        ).all()
        session.expunge_all()
        return list(rows)


def _run(job: jobs.Job) -> dict[str, object]:
    args = job_contract.arguments_of(job.task, dict(job.args))
    result: dict[str, object] = HANDLERS[job.task](job.id, args)
    return result


def test_each_kind_is_delivered_once_and_recorded(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    orthanc: OrthancServer,
    listener: tuple[Listener, int],
    fhir: FhirServer,
) -> None:
    ris, ris_port = listener
    wired = _wire(monkeypatch, orthanc.dicom_node, ris_port, fhir.url)
    version_pk, made = _draft(engine, wired)
    assert set(made) == set(HANDLERS)
    rows = _rows(engine, version_pk)
    by_kind = {
        target.kind: [r for r in rows if r.kind in target.carries]
        for target in (DicomTarget, MllpTarget, FhirTarget)
    }
    assert len(by_kind["dicom"]) == 2 and len(by_kind["hl7"]) == 1 and by_kind["fhir"]

    dicom = _run(made[EXPORT_DICOM])
    hl7 = _run(made[SEND_HL7])
    fhir_result = _run(made[PUSH_FHIR])

    assert dicom["sent"] == 2 and isinstance(dicom["export_s"], float)
    assert hl7["sent"] == 1
    assert fhir_result["sent"] == len(by_kind["fhir"])
    study_uid = orthanc.instance_tags(by_kind["dicom"][0].identifier)["StudyInstanceUID"]
    assert orthanc.study_instance_uids(study_uid) >= {r.identifier for r in by_kind["dicom"]}
    assert [m.split("\r", 1)[0].split("|")[9] for m in ris.received] == [
        by_kind["hl7"][0].identifier
    ]
    assert [path for path, _, _ in fhir.puts] == [f"/fhir/{r.identifier}" for r in by_kind["fhir"]]
    after = _rows(engine, version_pk)
    assert [(r.state, r.attempts, r.last_error) for r in after] == [("sent", 1, None)] * len(rows)

    # Nothing is pending any more: running the jobs again sends nothing.
    assert [_run(made[task]) for task in HANDLERS] == [{"sent": 0}] * 3
    assert len(ris.received) == 1 and len(fhir.puts) == len(by_kind["fhir"])


def test_failures_are_recorded_per_object_and_classified(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[Listener, int],
    fhir: FhirServer,
) -> None:
    ris, ris_port = listener
    ris.default = "CR"  # commit reject: permanent
    fhir.default = 400  # the first resource is refused; the others are not tried
    down = DicomNode("PACS", "127.0.0.1", free_port())
    wired = _wire(monkeypatch, down, ris_port, fhir.url)
    version_pk, made = _draft(engine, wired)

    with pytest.raises(TransientError, match="could not connect"):
        _run(made[EXPORT_DICOM])
    with pytest.raises(PermanentError, match="rejected with CR"):
        _run(made[SEND_HL7])
    with pytest.raises(PermanentError, match="HTTP 400"):
        _run(made[PUSH_FHIR])

    rows = _rows(engine, version_pk)
    dicom = [r for r in rows if r.kind in ("sr", "gsps")]
    assert [(r.state, r.attempts) for r in dicom] == [("failed", 1), ("failed", 1)]
    assert all("could not connect" in (r.last_error or "") for r in dicom)
    (hl7,) = [r for r in rows if r.kind == "hl7"]
    assert (hl7.state, hl7.attempts) == ("failed", 1) and "CR" in (hl7.last_error or "")
    fhir_rows = [r for r in rows if r.kind == "fhir"]
    assert (fhir_rows[0].state, fhir_rows[0].attempts) == ("failed", 1)
    assert "HTTP 400" in (fhir_rows[0].last_error or "")
    assert [(r.state, r.attempts) for r in fhir_rows[1:]] == [("pending", 0)] * (len(fhir_rows) - 1)
    assert len(fhir.puts) == 1


def test_unset_ris_and_fhir_server_are_permanent(settings: Settings) -> None:
    assert not settings.ris_mllp and not settings.fhir_server_url
    with pytest.raises(PermanentError, match="RADDRAFT_RIS_MLLP is not set"):
        exporter.send_hl7_job(1, SendHl7(report_version_pk=1))
    with pytest.raises(PermanentError, match="RADDRAFT_FHIR_SERVER_URL is not set"):
        exporter.push_fhir_job(1, PushFhir(report_version_pk=1))

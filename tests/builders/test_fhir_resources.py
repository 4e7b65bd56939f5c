"""FHIR R4B builders (DiagnosticReport, ImagingStudy, Provenance, Device, Practitioner,
CapabilityStatement): round trips through fhir.resources parsing, status and signer checks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from report_drafts.builders._fhir import PatientRef, image_refs, parse_resource
from report_drafts.builders.fhir_capability_statement import capability_statement
from report_drafts.builders.fhir_diagnostic_report import (
    CHEST_XRAY_2_VIEWS,
    diagnostic_report,
    parse_diagnostic_report,
    presented_text,
    report_status,
)
from report_drafts.builders.fhir_imaging_study import imaging_study
from report_drafts.builders.fhir_provenance import device, practitioner, provenance
from report_drafts.content import DEMO_WARNING, DRAFT_WARNING, ReportContent, ReportStatus
from tests.builders.helpers import ALGORITHM, DEMO_ALGORITHM, SIGNER, TRICKY, make_study

NOW = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)
PATIENT = PatientRef(id="RD0001", system="urn:oid:1.2.3.4", name="TEST CHEST")
STUDY_UID = "1.2.826.0.1.3680043.10.1077.1"
CONTENT = ReportContent(
    findings_text=f"Small left effusion. {TRICKY}",
    impression="Small left pleural effusion.",
    progression="New since prior.",
)


def _report(content: ReportContent, *, demo: bool = False, **kwargs: object):  # type: ignore[no-untyped-def]
    return diagnostic_report(
        content,
        resource_id="dr-1",
        patient=PATIENT,
        study_instance_uid=STUDY_UID,
        issued=NOW,
        effective=NOW - dt.timedelta(hours=1),
        demo=demo,
        **kwargs,  # type: ignore[arg-type]
    )


def _round_trip(resource):  # type: ignore[no-untyped-def]
    text = resource.model_dump_json()
    again = parse_resource(text)
    assert type(again) is type(resource)
    assert json.loads(again.model_dump_json()) == json.loads(text)
    return again


@pytest.mark.parametrize("status", list(ReportStatus))
def test_diagnostic_report_round_trip(status: ReportStatus) -> None:
    signer = SIGNER if status.is_signed else None
    content = dataclasses.replace(CONTENT, status=status, signer=signer)
    report = _report(content, imaging_study_id="is-1", accession="ACC1",
                     sr_sop_instance_uid="1.2.3.99")
    data = json.loads(report.model_dump_json())
    # R4/R4B field name; R5 would say "study"
    assert "imagingStudy" in data and "study" not in data
    again = parse_diagnostic_report(report.model_dump_json())
    assert again.status == status.value
    assert again.category[0].coding[0].system.endswith("v2-0074")
    assert again.category[0].coding[0].code == "RAD"
    assert (again.code.coding[0].system, again.code.coding[0].code) == (
        "http://loinc.org", CHEST_XRAY_2_VIEWS[0]
    )
    assert again.subject.identifier.value == PATIENT.id
    study = again.imagingStudy[0]
    assert study.identifier.system == "urn:dicom:uid"
    assert study.identifier.value == f"urn:oid:{STUDY_UID}"
    assert study.reference == "ImagingStudy/is-1"
    assert again.conclusion.startswith(content.impression)
    text = presented_text(again)
    assert text == content.text(demo=False)
    assert TRICKY in text
    if status.is_signed:
        assert [r.reference for r in again.resultsInterpreter] == ["Practitioner/jdoe"]
        assert DRAFT_WARNING not in text and DRAFT_WARNING not in again.conclusion
    else:
        assert again.resultsInterpreter is None
        assert DRAFT_WARNING in text and DRAFT_WARNING in again.conclusion
    assert again.issued.isoformat().startswith("2025-03-01T09:30")


def test_demo_warning_everywhere() -> None:
    report = _report(CONTENT, demo=True)
    assert DEMO_WARNING in presented_text(report)
    assert DEMO_WARNING in report.conclusion
    assert DEMO_WARNING in device(DEMO_ALGORITHM, resource_id="dev-1",
                                  device_uid="1.2.3").note[0].text


def test_invalid_statuses_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid DiagnosticReport status"):
        report_status("registered")
    with pytest.raises(ValueError, match="invalid DiagnosticReport status"):
        _report(dataclasses.replace(CONTENT, status="partial"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="signer"):
        _report(dataclasses.replace(CONTENT, status=ReportStatus.final))
    data = json.loads(_report(CONTENT).model_dump_json())
    data["status"] = "registered"  # valid FHIR, not a status RadDraft writes
    with pytest.raises(ValueError, match="invalid DiagnosticReport status"):
        parse_diagnostic_report(data)
    with pytest.raises(ValueError, match="timezone"):
        diagnostic_report(CONTENT, resource_id="x", patient=PATIENT, study_instance_uid=STUDY_UID,
                          issued=dt.datetime(2025, 1, 1), demo=False)
    with pytest.raises(ValueError, match="FHIR id"):
        diagnostic_report(CONTENT, resource_id="bad id!", patient=PATIENT,
                          study_instance_uid=STUDY_UID, issued=NOW, demo=False)


def test_imaging_study_round_trip() -> None:
    study = make_study()
    images = image_refs(study.sources)
    resource = _round_trip(
        imaging_study(
            resource_id="is-1",
            study_instance_uid=str(study.pa.StudyInstanceUID),
            patient=PATIENT,
            images=images,
            accession="ACC0001",
            started=NOW,
        )
    )
    assert resource.identifier[0].value == f"urn:oid:{study.pa.StudyInstanceUID}"
    assert resource.numberOfSeries == 2 and resource.numberOfInstances == 2
    uids = {i.uid for s in resource.series for i in s.instance}
    assert uids == {str(ds.SOPInstanceUID) for ds in study.sources}
    assert {s.modality.code for s in resource.series} == {"DX", "CR"}
    with pytest.raises(ValueError, match="ImagingStudy status"):
        imaging_study(resource_id="x", study_instance_uid=STUDY_UID, patient=PATIENT,
                      status="preliminary")


def test_provenance_device_practitioner() -> None:
    prov = _round_trip(
        provenance(
            resource_id="prov-1",
            targets=["DiagnosticReport/dr-1"],
            recorded=NOW,
            algorithm=ALGORITHM,
            device_id="dev-1",
            signer=SIGNER,
        )
    )
    roles = {a.type.coding[0].code: a.who for a in prov.agent}
    assert roles["author"].reference == "Device/dev-1"
    assert roles["verifier"].reference == "Practitioner/jdoe"
    draft_prov = provenance(resource_id="prov-0", targets=["DiagnosticReport/dr-1"],
                            recorded=NOW, algorithm=ALGORITHM, device_id="dev-1")
    assert [a.type.coding[0].code for a in draft_prov.agent] == ["author"]
    dev = _round_trip(device(ALGORITHM, resource_id="dev-1", device_uid="1.2.3.4.5"))
    assert dev.identifier[0].value == "urn:oid:1.2.3.4.5"
    assert dev.version[0].value == ALGORITHM.version
    doc = _round_trip(practitioner(SIGNER))
    assert doc.id == "jdoe" and doc.name[0].family == "Doe"


def test_capability_statement() -> None:
    statement = _round_trip(capability_statement(software_version="0.1.0",
                                                 base_url="http://localhost/fhir"))
    assert statement.fhirVersion == "4.3.0"
    resources = {r.type: r for r in statement.rest[0].resource}
    assert set(resources) == {"DiagnosticReport", "ImagingStudy"}
    for resource in resources.values():
        assert {i.code for i in resource.interaction} == {"read", "search-type"}
    params = {p.name for p in resources["DiagnosticReport"].searchParam}
    assert {"patient", "study", "status", "date"} <= params


def test_a_withdrawn_draft_is_entered_in_error() -> None:
    withdrawn = _round_trip(_report(CONTENT, withdrawal="AI draft rejected by radiologist"))
    assert withdrawn.status == "entered-in-error"
    assert withdrawn.conclusion.startswith(CONTENT.impression)
    assert "WITHDRAWN: AI draft rejected by radiologist" in withdrawn.conclusion
    assert DRAFT_WARNING in withdrawn.conclusion
    assert parse_diagnostic_report(withdrawn.model_dump_json()).status == "entered-in-error"
    signed = dataclasses.replace(CONTENT, status=ReportStatus.final, signer=SIGNER)
    with pytest.raises(ValueError, match="amended"):
        _report(signed, withdrawal="no")


def test_a_critical_version_is_tagged_critical_and_says_it_is_a_suspicion() -> None:
    critical = dataclasses.replace(CONTENT, extra={"critical": ["pneumothorax"]})
    draft = parse_diagnostic_report(_report(critical).model_dump_json())
    tags = {(t.system, t.code) for t in draft.meta.tag}
    assert tags == {
        ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "AA"),
        ("urn:raddraft:flag", "ai-critical-suspicion"),
    }
    assert [c.text for c in draft.conclusionCode] == ["pneumothorax"]
    assert "pending radiologist review; not a diagnosis" in draft.conclusion
    signed = dataclasses.replace(critical, status=ReportStatus.final, signer=SIGNER)
    final = parse_diagnostic_report(_report(signed).model_dump_json())
    # Signed: still critical abnormal, no longer an AI suspicion.
    assert {t.code for t in final.meta.tag} == {"AA"}
    assert "AI suspicion" not in (final.conclusion or "")
    assert _report(CONTENT).meta is None

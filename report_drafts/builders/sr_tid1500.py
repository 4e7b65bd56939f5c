"""The TID 1500 Measurement Report of one report version, as a Comprehensive 3D SR.

PS3.16 TID 1500 "Measurement Report" with one TID 1410 "Planar ROI Measurements and Qualitative
Evaluations" group per grounded accepted finding and the report text in TID 1500 rows 12-14
(a "Qualitative Evaluations" container of TEXT items), in the Comprehensive 3D SR IOD
(PS3.3 A.35.13), which the IHE AI Results profile expects.

Versions (PS3.3 C.17.2, Predecessor Documents Sequence): a draft is PARTIAL / UNVERIFIED /
PRELIMINARY with the device as the only observer; a signed report is a new instance, COMPLETE /
VERIFIED / FINAL, names the verifying observer and organisation, adds the person observer and
points back at the draft; an amendment or correction is again a new instance pointing at the
signed one. A stored object is never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

from report_drafts.builders._dicom import (
    DEFAULT_SITE,
    MANUFACTURER,
    check_same_study,
    check_uid,
    coding_schemes,
    finding_code,
    laterality_code,
    new_uid,
    prepared_source,
    site_code,
)
from report_drafts.content import (
    Algorithm,
    Finding,
    ReportContent,
    ReportStatus,
)
from report_drafts.text_safety import content_values, dicom_character_set, fit, safe_content

#: TID 1500 row 12 container (the code PS3.16 gives for it).
QUALITATIVE_EVALUATIONS = CodedConcept(
    value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations"
)
FINDING = CodedConcept(value="121071", scheme_designator="DCM", meaning="Finding")
IMPRESSION = CodedConcept(value="121073", scheme_designator="DCM", meaning="Impression")
COMMENT = CodedConcept(value="121106", scheme_designator="DCM", meaning="Comment")
CERTAINTY = CodedConcept(value="111012", scheme_designator="DCM", meaning="Certainty of Finding")
BOUNDED_BY = CodedConcept(value="75958009", scheme_designator="SCT", meaning="Bounded by")
#: TID 1500 row 4 Procedure Reported (CID 100 allows any imaging procedure code).
CHEST_RADIOGRAPH = CodedConcept(
    value="399208008", scheme_designator="SCT", meaning="Plain chest X-ray"
)
#: Prefix of the Finding TEXT item that carries the comparison with the prior.
PROGRESSION_PREFIX = "Comparison with prior: "

SR_SERIES_DESCRIPTION = "RadDraft AI report"


def _finding_group(
    finding: Finding, source: Dataset, algorithm_id: AlgorithmIdentification | None
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group for one grounded finding: tracking, code, site, algorithm, box, certainty."""
    assert finding.box is not None
    columns, rows = int(source.Columns), int(source.Rows)
    box = finding.box.clipped(columns, rows)
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        raise ValueError(
            f"box of finding {finding.tracking_uid} has no area inside the "
            f"{columns}x{rows} image: {finding.box}"
        )
    region = ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=np.array(box.polyline(), dtype=float),
        source_image=SourceImageForRegion(
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
        ),
    )
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(finding),
        referenced_region=region,
        finding_type=finding_code(finding.label),
        algorithm_id=algorithm_id,
        finding_sites=_finding_sites(finding),
        measurements=_certainty(finding),
        geometric_purpose=BOUNDED_BY,
    )


def _ungrounded_group(
    finding: Finding, algorithm_id: AlgorithmIdentification | None
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for an accepted finding without a box (still coded and tracked)."""
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(finding),
        finding_type=finding_code(finding.label),
        algorithm_id=algorithm_id,
        finding_sites=_finding_sites(finding),
        measurements=_certainty(finding),
    )


def _observed_by_person(group: Any, content: ReportContent, login: str, institution: str) -> None:
    """Give a radiologist's finding its observer: TID 1002 Observer Context with a Person
    Observer (TID 1003) as HAS OBS CONTEXT of its group, which overrides the document's device
    observer for that subtree (PS3.3 C.17.3.2.1; PS3.16 TID 1001/1002)."""
    signer = content.signer
    name = signer.name if signer is not None and signer.login == login else login
    person = ObserverContext(
        observer_type=codes.cid270.Person,
        observer_identifying_attributes=PersonObserverIdentifyingAttributes(
            name=name, login_name=login, organization_name=institution or None
        ),
    )
    group[0].ContentSequence.extend(person)


def _tracking(finding: Finding) -> TrackingIdentifier:
    """TID 4108: the finding's tracking UID, also as the human-readable identifier."""
    uid = check_uid(finding.tracking_uid, "tracking_uid")
    return TrackingIdentifier(uid=uid, identifier=uid)


def _finding_sites(finding: Finding) -> list[FindingSite] | None:
    site = site_code(finding.site)
    laterality = laterality_code(finding.laterality)
    if site is None and laterality is None:
        return None
    return [FindingSite(anatomic_location=site or DEFAULT_SITE, laterality=laterality)]


def _certainty(finding: Finding) -> list[Measurement] | None:
    """Certainty of Finding (DCM 111012) in percent, as in the CAD SR templates."""
    if finding.certainty is None:
        return None
    if not 0.0 <= finding.certainty <= 1.0:
        raise ValueError(f"certainty {finding.certainty} outside 0..1")
    return [
        Measurement(
            name=CERTAINTY,
            value=round(finding.certainty * 100.0, 3),
            unit=codes.UCUM.Percent,
        )
    ]


def _observation_context(
    content: ReportContent, algorithm: Algorithm, device_uid: str
) -> ObservationContext:
    """TID 1001: the device (TID 1004) always; the signing person (TID 1003) once signed."""
    device = ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=check_uid(device_uid, "device_uid"),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=fit(f"{algorithm.name} {algorithm.version}", 64),
        ),
    )
    person = None
    if content.status.is_signed:
        assert content.signer is not None
        person = ObserverContext(
            observer_type=codes.cid270.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=content.signer.name,
                login_name=content.signer.login,
                organization_name=content.signer.organization,
            ),
        )
    return ObservationContext(observer_person_context=person, observer_device_context=device)


def _text_item(name: CodedConcept, text: str) -> TextContentItem:
    return TextContentItem(name=name, value=text, relationship_type=RelationshipTypeValues.CONTAINS)


def qualitative_evaluations(content: ReportContent, *, demo: bool) -> ContainerContentItem:
    """TID 1500 rows 12-14: the report text as TEXT items in a Qualitative Evaluations container.

    Findings and impression are DCM 121071 / 121073; the comparison with the prior is a Finding
    starting with :data:`PROGRESSION_PREFIX`. While a warning applies (demo model, unsigned
    draft) each text item ends with it, and each warning is also its own Comment (DCM 121106), as is
    each review note of an unsigned draft (:meth:`ReportContent.review_notes`).
    """
    warnings = content.warnings(demo=demo)
    suffix = "".join(f"\n\n{w}" for w in warnings)
    items: list[TextContentItem] = []
    if content.findings_text.strip():
        items.append(_text_item(FINDING, content.findings_text.strip() + suffix))
    if content.impression.strip():
        items.append(_text_item(IMPRESSION, content.impression.strip() + suffix))
    if content.progression.strip():
        items.append(_text_item(FINDING, PROGRESSION_PREFIX + content.progression.strip() + suffix))
    # Review notes (critical suspicion, labels not understood, findings named only in the
    # text) are Comments of their own, so a PACS viewer shows them next to the findings.
    items.extend(_text_item(COMMENT, note) for note in content.review_notes())
    items.extend(_text_item(COMMENT, w) for w in warnings)
    container = ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = ContentSequence(items)
    return container


def _check_versions(
    content: ReportContent, previous: Dataset | None, study_uid: str, sop_uid: str
) -> None:
    """The predecessor rules of a signed / amended report (PS3.3 C.17.2.3)."""
    content.check_consistent()
    if content.status.is_signed and previous is None:
        raise ValueError(
            f"a {content.status.value} SR needs its predecessor (the draft or signed SR)"
        )
    if previous is None:
        return
    if str(previous.StudyInstanceUID) != study_uid:
        raise ValueError("the predecessor SR belongs to another study")
    if str(previous.SOPInstanceUID) == sop_uid:
        raise ValueError("a new version needs a new SOP Instance UID")
    if content.status in (ReportStatus.amended, ReportStatus.corrected) and (
        previous.get("VerificationFlag") != "VERIFIED"
    ):
        raise ValueError(f"an {content.status.value} SR must follow the signed (VERIFIED) SR")


def build_sr(  # noqa: PLR0913 (one keyword per SR document attribute (PS3.3 A.35))
    sources: Sequence[Dataset],
    content: ReportContent,
    algorithm: Algorithm,
    *,
    device_uid: str,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    institution: str,
    previous: Dataset | None = None,
    sop_instance_uid: str | None = None,
) -> Comprehensive3DSR:
    """The TID 1500 Comprehensive 3D SR of one report version.

    ``sources`` are the study's images (header only is enough), all of one study; they become the
    evidence. Free text is cleaned (:func:`report_drafts.text_safety.safe_content`) and the
    Specific Character Set (0008,0005) chosen to fit it: ISO_IR 192 when any value is beyond
    ASCII. Only accepted findings appear: a TID 1410 group with a closed 5-point POLYLINE
    (clipped to [0, Columns] x [0, Rows]) for each grounded one, a TID 1501 group for an accepted
    finding without a box. ``previous`` is the predecessor (required once signed: the draft for
    a final report, the signed SR for an amendment). The sources are never modified.
    """
    if not sources:
        raise ValueError("an SR needs at least one source image")
    # Defensive: the worker cleaned the model's text, but an edit or an old draft may not be.
    content = safe_content(content)
    prepared = [prepared_source(s) for s in sources]
    study_uid = check_same_study(prepared)
    sop_uid = check_uid(sop_instance_uid or new_uid(), "sop_instance_uid")
    _check_versions(content, previous, study_uid, sop_uid)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in prepared}

    algorithm_id = AlgorithmIdentification(name=algorithm.name, version=algorithm.version)
    groups: list[
        PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations
    ] = []
    for finding in content.accepted_findings:
        # A finding a radiologist added is theirs: no Algorithm Identification, and the
        # person as its observer (below), not the device.
        found_by = None if finding.added_by else algorithm_id
        if finding.box is not None and finding.sop_instance_uid:
            source = by_uid.get(finding.sop_instance_uid)
            if source is None:
                raise ValueError(
                    f"finding {finding.tracking_uid} is on image {finding.sop_instance_uid}, "
                    "which is not among the sources"
                )
            group: Any = _finding_group(finding, source, found_by)
        else:
            group = _ungrounded_group(finding, found_by)
        if finding.added_by:
            _observed_by_person(group, content, finding.added_by, institution)
        groups.append(group)

    report = _measurement_report(content, algorithm, device_uid, groups)
    report[0].ContentSequence.append(qualitative_evaluations(content, demo=algorithm.demo))

    signed = content.status.is_signed
    signer = content.signer if signed else None
    charset = dicom_character_set(
        [*content_values(content), institution, algorithm.name, algorithm.program_version],
        prepared[0].get("SpecificCharacterSet"),
    )
    sr = Comprehensive3DSR(
        evidence=prepared,
        content=report,
        series_instance_uid=check_uid(series_instance_uid, "series_instance_uid"),
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=signed,
        is_final=signed,
        is_verified=signed,
        institution_name=institution,
        verifying_observer_name=signer.name if signer else None,
        verifying_organization=signer.organization if signer else None,
        previous_versions=[previous] if previous is not None else None,
        coding_schemes=coding_schemes(),
        series_description=_series_description(content, algorithm),
        manufacturer_model_name=fit(algorithm.name, 64),
        software_versions=algorithm.program_version,
        specific_character_set=charset,
    )
    return sr


def _measurement_report(
    content: ReportContent,
    algorithm: Algorithm,
    device_uid: str,
    groups: Sequence[
        PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations
    ],
) -> MeasurementReport:
    """TID 1500 rows 1-6; without any finding row 6 (Imaging Measurements) is left out.

    highdicom insists on one group, so a report without findings is built with a placeholder
    group whose container is removed again (rows 6 and 12 are each conditional on the other).
    """
    context = _observation_context(content, algorithm, device_uid)
    if groups:
        return MeasurementReport(
            observation_context=context,
            procedure_reported=CHEST_RADIOGRAPH,
            imaging_measurements=groups,
        )
    placeholder = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(identifier="placeholder")
    )
    report = MeasurementReport(
        observation_context=context,
        procedure_reported=CHEST_RADIOGRAPH,
        imaging_measurements=[placeholder],
    )
    items = report[0].ContentSequence
    last = items[len(items) - 1]
    if last.name != codes.DCM.ImagingMeasurements:  # pragma: no cover - highdicom layout
        raise RuntimeError("unexpected TID 1500 layout from highdicom")
    del items[len(items) - 1]
    return report


def _series_description(content: ReportContent, algorithm: Algorithm) -> str:
    state = {
        ReportStatus.preliminary: "unverified AI draft",
        ReportStatus.final: "signed",
        ReportStatus.amended: "amended",
        ReportStatus.corrected: "corrected",
    }[content.status]
    demo = "DEMO " if algorithm.demo else ""
    return f"{demo}{SR_SERIES_DESCRIPTION} ({state})"[:64]

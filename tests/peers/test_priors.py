"""Priors from a real Orthanc: C-FIND at study level, C-MOVE to RadDraft's AE."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from pydicom.dataset import Dataset

from peers.dicom_scu import (
    MoveOutcome,
    PermanentQueryError,
    TransientQueryError,
    find_prior_studies,
    move_study,
)
from tests.dicom_factory import make_cxr, new_uid
from tests.orthanc import OrthancServer
from tests.peers.conftest import RADDRAFT_AE, FakeScp

PATIENT = "PRIOR01"


def _study(
    pacs: OrthancServer,
    *,
    date: str,
    time_: str = "101500",
    modality: str = "DX",
    patient_id: str = PATIENT,
    images: int = 1,
) -> list[Dataset]:
    study_uid, series_uid = new_uid(), new_uid()
    datasets = []
    for number in range(1, images + 1):
        ds = make_cxr(
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            modality=modality,
            study_date=date,
            accession=f"A{date}{modality}",
            instance_number=number,
            view="PA" if number == 1 else "LATERAL",
            rows=64,
            cols=64,
        )
        ds.StudyTime = time_
        pacs.upload(ds)
        datasets.append(ds)
    return datasets


def test_find_prior_studies_filters_and_sorts_newest_first(orthanc: OrthancServer) -> None:
    oldest = _study(orthanc, date="20230110", modality="CR")[0]
    older = _study(orthanc, date="20240601", images=2)[0]
    same_day_earlier = _study(orthanc, date="20240901", time_="080000")[0]
    current = _study(orthanc, date="20240901", time_="101500")[0]
    _study(orthanc, date="20241201")  # later than the current study
    _study(orthanc, date="20240301", modality="CT")  # not a radiograph
    _study(orthanc, date="20240501", patient_id="SOMEONEELSE")

    priors = find_prior_studies(
        orthanc.dicom_node,
        calling_ae=RADDRAFT_AE,
        patient_id=PATIENT,
        before_date="20240901",
        before_time="101500",
        exclude_study_uid=current.StudyInstanceUID,
        timeout=10,
    )

    assert [p.study_instance_uid for p in priors] == [
        same_day_earlier.StudyInstanceUID,
        older.StudyInstanceUID,
        oldest.StudyInstanceUID,
    ]
    first = priors[1]
    assert first.study_date == "20240601"
    assert first.modalities == ("DX",)
    assert first.accession_number == "A20240601DX"
    assert first.patient_id == PATIENT
    assert first.study_description == "XR CHEST PA AND LATERAL"
    assert priors[2].modalities == ("CR",)

    # Without a time, the whole day counts; the current study is still excluded.
    by_day = find_prior_studies(
        orthanc.dicom_node,
        calling_ae=RADDRAFT_AE,
        patient_id=PATIENT,
        before_date="20240901",
        exclude_study_uid=current.StudyInstanceUID,
        timeout=10,
    )
    assert [p.study_instance_uid for p in by_day] == [p.study_instance_uid for p in priors]
    # A time before the same-day study leaves it out; DX only leaves out the CR study.
    dx_only = find_prior_studies(
        orthanc.dicom_node,
        calling_ae=RADDRAFT_AE,
        patient_id=PATIENT,
        before_date="20240901",
        before_time="070000",
        modalities=("DX",),
        timeout=10,
    )
    assert [p.study_instance_uid for p in dx_only] == [older.StudyInstanceUID]


def test_find_for_a_patient_without_priors_is_empty(orthanc: OrthancServer) -> None:
    _study(orthanc, date="20240601", patient_id="OTHER")
    assert (
        find_prior_studies(
            orthanc.dicom_node, calling_ae=RADDRAFT_AE, patient_id=PATIENT, before_date="20250101"
        )
        == []
    )


def test_find_with_the_pacs_down_is_transient(orthanc: OrthancServer) -> None:
    orthanc.stop()
    with pytest.raises(TransientQueryError):
        find_prior_studies(
            orthanc.dicom_node,
            calling_ae=RADDRAFT_AE,
            patient_id=PATIENT,
            before_date="20240901",
            timeout=3,
        )


def test_move_study_brings_the_instances_to_raddraft_ae(
    orthanc_factory: Callable[..., OrthancServer], fake_scp: Callable[..., FakeScp]
) -> None:
    listener = fake_scp(ae_title=RADDRAFT_AE)
    pacs = orthanc_factory(modalities={RADDRAFT_AE: ("127.0.0.1", listener.port)})
    prior = _study(pacs, date="20240601", images=2)
    _study(pacs, date="20240701")  # another study: must not come along

    started = time.monotonic()
    outcome = move_study(
        pacs.dicom_node,
        prior[0].StudyInstanceUID,
        calling_ae=RADDRAFT_AE,
        destination_ae=RADDRAFT_AE,
        timeout=20,
    )
    elapsed = time.monotonic() - started

    assert isinstance(outcome, MoveOutcome)
    assert outcome.ok and outcome.status == 0x0000
    assert (outcome.completed, outcome.failed) == (2, 0)
    assert listener.received_uids == {ds.SOPInstanceUID for ds in prior}
    # Orthanc moves synchronously: everything arrived before the final response.
    assert all(t <= started + elapsed for t in listener.arrival_times)
    assert elapsed < 20


def test_move_study_honours_its_time_limit(
    orthanc: OrthancServer, fake_scp: Callable[..., FakeScp]
) -> None:
    slow = fake_scp(ae_title=RADDRAFT_AE, delay=2.0)
    orthanc.add_modality(RADDRAFT_AE, "127.0.0.1", slow.port)
    prior = _study(orthanc, date="20240601", images=3)

    started = time.monotonic()
    with pytest.raises(TransientQueryError, match="time limit"):
        move_study(
            orthanc.dicom_node,
            prior[0].StudyInstanceUID,
            calling_ae=RADDRAFT_AE,
            destination_ae=RADDRAFT_AE,
            timeout=1.5,
        )
    assert time.monotonic() - started < 3.5


def test_move_to_a_destination_orthanc_does_not_know_fails_permanently(
    orthanc: OrthancServer,
) -> None:
    prior = _study(orthanc, date="20240601")
    with pytest.raises(PermanentQueryError) as failure:
        move_study(
            orthanc.dicom_node,
            prior[0].StudyInstanceUID,
            calling_ae=RADDRAFT_AE,
            destination_ae="UNKNOWNAE",
            timeout=10,
        )
    # Orthanc 1.10 answers 0xC000 (unable to process) rather than 0xA801 (PS3.4 C.4.2.1.5).
    assert failure.value.status in (0xA801, 0xC000)
    assert isinstance(failure.value.outcome, MoveOutcome)

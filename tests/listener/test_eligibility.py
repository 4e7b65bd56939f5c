"""Which images are drafted, per PS3.3: ORIGINAL (Image Type value 1), not FOR PROCESSING
(Presentation Intent Type, DX For Processing), frontal or lateral. Through the real listener
(DCMTK storescu): refused studies say why, get no job and are listed on the queue page; an
eligible study's refused images are not given to the model; the settings let a site opt in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydicom import Dataset
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dicom_listener import version_images
from dicom_listener.eligibility import ImageFacts, ImagePolicy, eligibility, image_refusal
from raddraft.cli import main
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts.tables import Role
from report_drafts.users import add_user
from tests.dicom_factory import StudyIds, make_cxr
from tests.listener.conftest import complete_versions, draft_jobs, versions_of
from tests.listener_process import ListenerProcess, storescu
from web import create_web_app


def _write(path: Path, ids: StudyIds, view: str, number: int, **kwargs: object) -> Path:
    kwargs = dict(kwargs)
    image_type = kwargs.pop("image_type", None)
    ds: Dataset = make_cxr(
        None,
        patient_id=ids.patient_id,
        study_uid=ids.study_uid,
        series_uid=ids.series_uid,
        accession=ids.accession,
        view=view,
        instance_number=number,
        **kwargs,  # type: ignore[arg-type]
    )
    if image_type is not None:
        ds.ImageType = image_type
    ds.save_as(path, enforce_file_format=True)
    return path


def _force(study_uid: str) -> None:
    CliRunner().invoke(main, ["study", "complete", study_uid])


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"for_processing": True}, "FOR PROCESSING"),
        ({"image_type": ["DERIVED", "SECONDARY"]}, "not an ORIGINAL image"),
        ({"modality": "CR", "view": "", "series_description": "chest"}, "neither frontal"),
    ],
)
def test_refused_images_leave_the_study_undrafted_with_the_reason(
    listener: ListenerProcess,
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    kwargs: dict[str, object],
    why: str,
) -> None:
    ids = StudyIds(patient_id="ELIG1", accession="ACC-REFUSED")
    kwargs = dict(kwargs)  # shared by the parametrised runs: not to be changed
    view = str(kwargs.pop("view", "PA"))
    path = _write(tmp_path / "x.dcm", ids, view, 1, **kwargs)
    assert storescu(listener.port, [path]).returncode == 0
    _force(ids.study_uid)
    [version] = versions_of(engine, ids.study_uid)
    assert version.eligible is False
    assert version.ineligible_reason is not None and why in version.ineligible_reason
    assert draft_jobs(engine) == []

    # The queue page lists the refusal and says why.
    with session_scope(engine) as session:
        add_user(session, "boss", Role.admin, display_name="Boss^Admin")
        _, token = add_user(session, "boss2", Role.admin, display_name="Boss^Two")
    client = TestClient(create_web_app(settings))
    form = client.get("/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf
    client.post("/login", data={"csrf_token": csrf.group(1), "token": token})
    page = client.get("/queue").text
    assert 'data-testid="refused-studies"' in page and "ACC-REFUSED" in page and why in page


def test_an_eligible_study_drafts_only_its_original_presentation_views(
    listener: ListenerProcess, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ids = StudyIds(patient_id="ELIG2")
    files = [
        _write(tmp_path / "1.dcm", ids, "PA", 1),
        _write(tmp_path / "2.dcm", ids, "PA", 2, image_type=["DERIVED", "SECONDARY"]),
        _write(tmp_path / "3.dcm", ids, "LATERAL", 3, for_processing=True),
        _write(tmp_path / "4.dcm", ids, "LATERAL", 4),
    ]
    assert storescu(listener.port, files).returncode == 0
    _force(ids.study_uid)
    [version] = complete_versions(engine, ids.study_uid)
    assert version.eligible is True and len(draft_jobs(engine)) == 1
    with Session(engine) as session:
        images = version_images(session, version.id, archive_dir=settings.archive_dir)
        everything = version_images(
            session,
            version.id,
            archive_dir=settings.archive_dir,
            policy=ImagePolicy(allow_derived=True, allow_for_processing=True),
        )
    assert [i.instance_number for i in images] == ["1", "4"]
    assert len(everything) == 4


def test_sites_may_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    derived = ImageFacts(modality="DX", view_position="PA", image_type="DERIVED\\PRIMARY")
    raw = ImageFacts(modality="DX", view_position="PA", presentation_intent="FOR PROCESSING")
    other = ImageFacts(modality="DX", view_position="", body_part_examined="CHEST")
    assert image_refusal(derived) and image_refusal(raw) and image_refusal(other)
    monkeypatch.setenv("RADDRAFT_ELIGIBLE_DERIVED_IMAGES", "true")
    monkeypatch.setenv("RADDRAFT_ELIGIBLE_FOR_PROCESSING_IMAGES", "true")
    monkeypatch.setenv("RADDRAFT_ELIGIBLE_OTHER_VIEWS", "true")
    policy = ImagePolicy.from_settings(Settings())
    assert image_refusal(derived, policy) is None and image_refusal(raw, policy) is None
    assert image_refusal(other, policy) is None
    assert eligibility("XR CHEST", [derived], policy) == (True, None)
    assert eligibility("XR CHEST", [derived])[0] is False

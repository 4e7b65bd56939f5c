"""The listener against real DCMTK peers, on SQLite and PostgreSQL.

Each test starts ``python -m raddraft listen`` (fixture ``listener``) and talks to it with
Debian's ``echoscu``/``storescu``; the database and the archive are then checked directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dicom_listener import prior_versions, study_for_version, version_images
from raddraft.jobs import Priority
from raddraft.settings import Settings
from tests.dicom_factory import StudyIds, compress, make_cxr, make_study
from tests.listener.conftest import (
    complete_versions,
    draft_jobs,
    instance_count,
    study_row,
    versions_of,
    wait_for,
)
from tests.listener_process import ListenerProcess, acknowledged, echoscu, storescu


def test_echo_from_allowed_caller_and_rejection_of_unknown(
    listener: ListenerProcess, engine: Engine
) -> None:
    assert echoscu(listener.port, aet="ECHOSCU").returncode == 0
    refused = echoscu(listener.port, aet="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    wait_for(lambda: "association rejected" in listener.log_text())
    line = next(x for x in listener.log_text().splitlines() if "association rejected" in x)
    assert "calling=INTRUDER" in line and "not allowed" in line

    stored = storescu(listener.port, [make_cxr_file(listener)], aet="INTRUDER")
    assert stored.returncode != 0
    assert instance_count(engine) == 0


def make_cxr_file(listener: ListenerProcess) -> Path:
    path = listener.log_path.parent / "one.dcm"
    make_cxr(path)
    return path


# Each syntax with the storescu option that proposes it (storescu otherwise offers only
# uncompressed syntaxes and would decompress on its side).
SYNTAXES = {
    ImplicitVRLittleEndian: "-xi",
    ExplicitVRLittleEndian: "-xe",
    DeflatedExplicitVRLittleEndian: "-xd",
    JPEGBaseline8Bit: "-xy",
    JPEGExtended12Bit: "-xx",
    JPEGLosslessSV1: "-xs",
    JPEGLSLossless: "-xt",
    JPEGLSNearLossless: "-xu",
    JPEG2000Lossless: "-xv",
    JPEG2000: "-xw",
    RLELossless: "-xr",
}


def test_transfer_syntaxes_are_stored_exactly_as_received(
    listener: ListenerProcess, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    from dicom_listener.tables import Instance

    ids = StudyIds(patient_id="TS01")
    files = {}
    for number, (syntax, option) in enumerate(SYNTAXES.items(), start=1):
        source = tmp_path / f"src_{number}.dcm"
        make_cxr(
            source,
            patient_id=ids.patient_id,
            study_uid=ids.study_uid,
            series_uid=ids.series_uid,
            instance_number=number,
            seed=number,
            rows=128,
            cols=96,
        )
        path = compress(source, tmp_path / f"ts_{number}.dcm", syntax)
        files[path] = syntax
        result = storescu(listener.port, [path], options=[option])
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(acknowledged(result.stdout + result.stderr)) == 1, syntax.name

    with Session(engine) as session:
        rows = {i.sop_instance_uid: i for i in session.query(Instance)}
    assert len(rows) == len(files)
    for path, syntax in files.items():
        sent = dcmread(path)
        row = rows[sent.SOPInstanceUID]
        assert row.transfer_syntax_uid == syntax, syntax.name
        archived = dcmread(settings.archive_dir / row.path)
        assert archived.file_meta.TransferSyntaxUID == syntax
        # Never transcoded: the encoded pixel data (compressed fragments included) is
        # exactly what was sent.
        assert archived.PixelData == sent.PixelData, syntax.name
    assert not list((settings.archive_dir / ".tmp").iterdir())


def _dataset_bytes(path: Path) -> bytes:
    """The file's bytes after its file meta group."""
    ds = dcmread(path, stop_before_pixels=True)
    data = path.read_bytes()
    meta_length = int(ds.file_meta.FileMetaInformationGroupLength)
    return data[132 + 12 + meta_length :]


def test_two_view_study_completes_by_cxr_rule_and_enqueues_exactly_one_job(
    listener: ListenerProcess, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ids, files = make_study(
        tmp_path / "study", ("PA", "LATERAL"), priority="STAT", reason="fever and cough"
    )
    result = storescu(listener.port, files)
    assert result.returncode == 0, result.stdout + result.stderr

    completed = wait_for(lambda: complete_versions(engine, ids.study_uid), timeout=10)
    assert len(completed) == 1
    version = completed[0]
    assert version.completion_reason == "cxr_rule"
    assert version.eligible is True and version.ineligible_reason is None
    assert version.job_key == f"draft:version:{version.id}"

    jobs = draft_jobs(engine)
    assert [j.key for j in jobs] == [version.job_key]
    assert jobs[0].args == {"study_version_pk": version.id}
    assert jobs[0].queue == "gpu"
    assert jobs[0].priority == Priority.stat

    study = study_row(engine, ids.study_uid)
    assert study is not None and study.indication == "fever and cough"

    with Session(engine) as session:
        images = version_images(session, version.id, archive_dir=settings.archive_dir)
        info = study_for_version(session, version.id)
    assert [i.view_position for i in images] == ["PA", "LL"]
    assert images[0].frontal and images[1].lateral
    assert all(i.path.is_file() and i.rows == 256 for i in images)
    assert info.patient_id == ids.patient_id and info.eligible is True

    # A restart completes nothing twice and adds no job.
    listener.stop()
    listener.start()
    assert echoscu(listener.port).returncode == 0
    assert len(draft_jobs(engine)) == 1


def test_resend_is_accepted_and_stored_once(
    listener: ListenerProcess, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    _, files = make_study(tmp_path / "study", ("PA",))
    for _ in range(3):
        result = storescu(listener.port, files)
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(acknowledged(result.stdout + result.stderr)) == 1
    assert instance_count(engine) == 1
    assert len(list(settings.archive_dir.rglob("*.dcm"))) == 1
    assert "duplicate" in listener.log_text()


def test_forced_completion_then_new_version_for_late_images(
    listener: ListenerProcess, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from raddraft.cli import main

    # A lone lateral: neither the CXR rule nor (within this test) the quiet period applies.
    ids, first = make_study(tmp_path / "a", ("LATERAL",))
    assert storescu(listener.port, first).returncode == 0
    wait_for(lambda: versions_of(engine, ids.study_uid))

    runner = CliRunner()
    forced = runner.invoke(main, ["study", "complete", ids.study_uid])
    assert forced.exit_code == 0, forced.output
    assert "version 1 complete" in forced.output and "no frontal" in forced.output
    [v1] = versions_of(engine, ids.study_uid)
    assert v1.completion_reason == "forced" and v1.eligible is False and v1.job_key is None
    again = runner.invoke(main, ["study", "complete", ids.study_uid])
    assert "no open version" in again.output
    unknown = runner.invoke(main, ["study", "complete", "1.2.3.4"])
    assert unknown.exit_code != 0

    # The PA arrives late: version 2, which sees both images and completes by the CXR rule.
    _, late = make_study(
        tmp_path / "b",
        ("PA",),
        ids=StudyIds(patient_id=ids.patient_id, study_uid=ids.study_uid, series_uid=ids.series_uid),
    )
    late_file = late[0].rename(tmp_path / "late_pa.dcm")
    make_cxr(
        late_file,
        patient_id=ids.patient_id,
        study_uid=ids.study_uid,
        series_uid=ids.series_uid,
        view="PA",
        instance_number=2,
    )
    assert storescu(listener.port, [late_file]).returncode == 0
    wait_for(lambda: len(complete_versions(engine, ids.study_uid)) == 2, timeout=10)
    v1, v2 = versions_of(engine, ids.study_uid)
    assert v2.number == 2 and v2.completion_reason == "cxr_rule" and v2.eligible is True
    assert [j.args for j in draft_jobs(engine)] == [{"study_version_pk": v2.id}]
    with Session(engine) as session:
        images = version_images(session, v2.id, archive_dir=settings.archive_dir)
        first_only = version_images(session, v1.id, archive_dir=settings.archive_dir)
    assert sorted(i.view_position for i in images) == ["LL", "PA"]
    assert [i.view_position for i in first_only] == ["LL"]

    listing = runner.invoke(main, ["studies", "--json"])
    assert listing.exit_code == 0 and ids.study_uid in listing.output
    assert '"instances": 2' in listing.output


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"modality": "CT", "body_part": "CHEST", "view": ""}, "not a radiograph"),
        (
            {"body_part": "KNEE", "study_description": "XR KNEE 2 VIEWS", "view": "AP"},
            "body part KNEE",
        ),
        (
            {"body_part": "", "study_description": "XR", "series_description": "", "view": "PA"},
            "nothing says chest",
        ),
    ],
)
def test_ineligible_studies_say_why_and_get_no_job(
    listener: ListenerProcess,
    engine: Engine,
    tmp_path: Path,
    kwargs: dict[str, str],
    why: str,
) -> None:
    ids = StudyIds(patient_id="INEL")
    path = tmp_path / "x.dcm"
    make_cxr(path, patient_id=ids.patient_id, study_uid=ids.study_uid, **kwargs)  # type: ignore[arg-type]
    assert storescu(listener.port, [path]).returncode == 0
    from click.testing import CliRunner

    from raddraft.cli import main

    CliRunner().invoke(main, ["study", "complete", ids.study_uid])
    [version] = versions_of(engine, ids.study_uid)
    assert version.eligible is False
    assert version.ineligible_reason is not None and why in version.ineligible_reason
    assert draft_jobs(engine) == []


def test_prior_versions_lists_earlier_eligible_studies_newest_first(
    listener: ListenerProcess, engine: Engine, tmp_path: Path
) -> None:
    studies = []
    for date in ("20200101", "20220101", "20240101"):
        ids = StudyIds(patient_id="PRIOR1")
        _, files = make_study(tmp_path / date, ("PA", "LATERAL"), ids=ids, study_date=date)
        assert storescu(listener.port, files).returncode == 0
        studies.append(ids)
    knee = tmp_path / "knee.dcm"
    make_cxr(
        knee,
        patient_id="PRIOR1",
        body_part="KNEE",
        study_description="XR KNEE",
        study_date="20230101",
    )
    assert storescu(listener.port, [knee]).returncode == 0
    wait_for(lambda: all(complete_versions(engine, s.study_uid) for s in studies), timeout=15)
    with Session(engine) as session:
        priors = prior_versions(session, patient_id="PRIOR1", before_study_date="20240101")
    assert [p.study_date for p in priors] == ["20220101", "20200101"]
    assert all(p.eligible for p in priors)

"""From a modality's push to a draft and DICOM results in a real PACS, with real processes.

Every test runs RadDraft as separate processes (listener, router, Celery workers) against a
real Orthanc; DCMTK storescu is the modality. The model is either the tiny random-weight
checkpoint loaded through ``from_pretrained`` (the real path), or a scripted OpenAI-compatible
server where a test needs predictable grounded findings.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select

from raddraft import jobs
from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts.tables import DraftRun, Report, ReportVersion
from tests.builders.helpers import dciodvfy_ok, dcmpschk_ok
from tests.dicom_factory import StudyIds, make_study
from tests.orthanc import OrthancServer
from tests.processes import wait_for
from tests.stack import Stack
from tests.worker.model_server import ScriptedModelServer
from web.api import views
from worker import pipeline

pytestmark = pytest.mark.slow

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33"}
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"


def _scripted(server: ScriptedModelServer) -> dict[str, str]:
    return {
        "RADDRAFT_MODEL_BACKEND": "openai",
        "RADDRAFT_MODEL_SERVER_URL": server.url,
        "RADDRAFT_MODEL": "StanfordAIMI/CheXOne",
    }


def _tiny(path: Path) -> dict[str, str]:
    return {"RADDRAFT_MODEL": str(path), "RADDRAFT_ALLOW_DEMO_EXPORT": "true"}


def _failures_logged(stack: Stack, job_id: int) -> list[tuple[str, str]]:
    """(next state, error) of each failed try of job ``job_id``, from the io-worker's log."""
    pattern = re.compile(rf"job failed job={job_id} next=(\w+) error=(.*)$")
    log = stack.log_dir / "io-worker.log"
    return [
        (found.group(1), found.group(2))
        for line in log.read_text(errors="replace").splitlines()
        if (found := pattern.search(line))
    ]


def _drafted_logged(stack: Stack, study_uid: str, timeout: float = 120) -> dict[str, str]:
    """The numbers of the gpu worker's ``drafted`` line for ``study_uid``. The worker writes
    that line once the whole trace is stored, after the draft (issue 19), so a test that has
    only waited for the draft waits here for the line."""
    wanted = f"drafted study={study_uid} "
    found: list[str] = []

    def logged() -> bool:
        log = (stack.log_dir / "gpu-worker.log").read_text(errors="replace")
        found.extend(line for line in log.splitlines() if wanted in line)
        return bool(found)

    wait_for(logged, timeout, f"the drafted line of {study_uid}", stack.processes)
    words = found[0].split(wanted, 1)[1].split()
    fields = dict(word.split("=", 1) for word in words if "=" in word)
    return {k: fields.get(k, "") for k in ("study_version_pk", "report", "report_version")}


def _objects_in_orthanc(orthanc: OrthancServer, study_uid: str) -> dict[str, list[str]]:
    """SOP Instance UIDs in Orthanc's copy of the study, by kind."""
    kinds: dict[str, list[str]] = {"sr": [], "gsps": [], "image": []}
    for instance in orthanc.study_instances(study_uid):
        tags = orthanc.instance_tags(instance["MainDicomTags"]["SOPInstanceUID"])
        kind = (
            "sr"
            if tags["SOPClassUID"] in SR_CLASSES
            else "gsps"
            if tags["SOPClassUID"] == GSPS_CLASS
            else "image"
        )
        kinds[kind].append(tags["SOPInstanceUID"])
    return kinds


def _download(orthanc: OrthancServer, sop_uid: str, folder: Path) -> Path:
    orthanc_id = next(h["ID"] for h in orthanc.lookup(sop_uid) if h["Type"] == "Instance")
    path = folder / f"{sop_uid}.dcm"
    path.write_bytes(orthanc.rest(f"/instances/{orthanc_id}/file"))
    return path


def _run(stack: Stack, study_version_pk: int) -> dict[str, Any]:
    with session_scope(stack.engine) as session:
        run = session.scalar(select(DraftRun).where(DraftRun.study_version_pk == study_version_pk))
        assert run is not None
        return {"prior": run.prior, "stages": run.stages}


def _sign(stack: Stack, report_pk: int, impression: str) -> None:
    """A radiologist edits the impression and signs, through the lifecycle."""
    from report_drafts import signoff, version_reads
    from report_drafts.users import add_user

    with session_scope(stack.engine) as session:
        user, _ = add_user(session, f"rad{report_pk}", "radiologist", display_name="Doe^Jane")
        signoff.open_report(session, report_pk, user)
        report = version_reads.get_report(session, report_pk)
        edited = signoff.edit_text(
            session, report_pk, user, expected_version=report.current_version, impression=impression
        )
        settings = Settings(
            data_dir=Path(stack.env["RADDRAFT_DATA_DIR"]),
            database_url=stack.env["RADDRAFT_DATABASE_URL"],
        )
        signoff.sign(
            session,
            report_pk,
            user,
            expected_version=edited.number,
            edit_reason="content",
            settings=settings,
        )


def test_two_view_study_reaches_pacs_as_sr_and_gsps(
    production_env: dict[str, str],
    orthanc: OrthancServer,
    scripted_model: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    """PostgreSQL + Redis: push, draft, SR and GSPS in Orthanc's copy of the study, valid."""
    ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=640, cols=520)
    orthanc.upload(files[0])
    orthanc.upload(files[1])
    env = {
        **production_env,
        **_scripted(scripted_model),
        "RADDRAFT_DESTINATIONS": str(orthanc.dicom_node),
    }
    stack = Stack(tmp_path / "logs", env).start()
    try:
        stack.push(files)
        report = stack.wait_for_draft(ids.study_uid)
        stack.wait_for_jobs("raddraft.export_dicom", {"done"}, 1)
    finally:
        stack.stop()

    with session_scope(stack.engine) as session:
        draft = session.scalar(select(ReportVersion).where(ReportVersion.report_pk == report.id))
        assert draft is not None and draft.status == "preliminary"
        labels = {f["label"].lower() for f in draft.content["findings"]}
    assert "pleural effusion" in labels
    # The model saw the frontal image first, then the lateral, in the first turn.
    assert scripted_model.image_counts("view of this chest X-ray")[0] == 2

    found = _objects_in_orthanc(orthanc, ids.study_uid)
    assert len(found["sr"]) == 1 and len(found["gsps"]) == 1, found
    sr_path = _download(orthanc, found["sr"][0], tmp_path)
    gsps_path = _download(orthanc, found["gsps"][0], tmp_path)
    dciodvfy_ok(sr_path)
    dciodvfy_ok(gsps_path)
    dcmpschk_ok(gsps_path)
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == ids.study_uid
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    gsps = pydicom.dcmread(gsps_path)
    referenced = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == pydicom.dcmread(files[0]).SOPInstanceUID


def test_embedded_default_drafts_with_the_tiny_checkpoint(
    embedded_env: dict[str, str], orthanc: OrthancServer, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``raddraft up`` on SQLite and the filesystem broker, the model through from_pretrained."""
    ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=400, cols=360)
    env = {
        **embedded_env,
        **_tiny(tiny_checkpoint),
        "RADDRAFT_DESTINATIONS": str(orthanc.dicom_node),
    }
    stack = Stack(tmp_path / "logs", env, parts={"up": ["up", "--without", "web"]}).start()
    try:
        stack.push(files)
        report = stack.wait_for_draft(ids.study_uid)
        assert stack.wait_for_trace(ids.study_uid) == "complete"
        stack.wait_for_jobs("raddraft.export_dicom", {"done"}, 1)
    finally:
        stack.stop()
    run = _run(stack, report.study_version_pk)
    assert {row["stage"] for row in run["stages"]} >= {1, 2, 8}
    assert run["prior"]["source"] == "none"
    found = _objects_in_orthanc(orthanc, ids.study_uid)
    assert len(found["sr"]) == 1, found
    sr_path = _download(orthanc, found["sr"][0], tmp_path)
    dciodvfy_ok(sr_path)
    # A demo model's draft says so in the object that reaches PACS.
    assert "random weights" in sr_path.read_bytes().decode("latin-1")


def test_prior_from_archive_then_from_pacs(
    production_env: dict[str, str],
    orthanc_factory: Any,
    scripted_model: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path / "logs", {**production_env, **_scripted(scripted_model)})
    pacs = orthanc_factory(modalities={"RADDRAFT": ("127.0.0.1", stack.port)})
    stack.env["RADDRAFT_QUERY_PACS"] = str(pacs.dicom_node)
    stack.start()
    try:
        # A patient whose earlier study RadDraft itself received: the archive serves it.
        older = StudyIds(patient_id="PRIOR1")
        _, old_files = make_study(tmp_path / "old", ("PA",), ids=older, study_date="20250102")
        stack.push(old_files)
        old_report = stack.wait_for_draft(older.study_uid)
        _sign(stack, old_report.id, impression="Small left pleural effusion.")
        newer = StudyIds(patient_id="PRIOR1")
        _, new_files = make_study(
            tmp_path / "new", ("PA", "LATERAL"), ids=newer, study_date="20260102"
        )
        stack.push(new_files)
        report = stack.wait_for_draft(newer.study_uid)
        prior = _run(stack, report.study_version_pk)["prior"]
        assert prior["source"] == "archive" and prior["study_instance_uid"] == older.study_uid
        # The log names what the API shows: the report's id and version number (issue 22).
        assert _drafted_logged(stack, newer.study_uid) == {
            "study_version_pk": str(report.study_version_pk),
            "report": str(report.id),
            "report_version": "1",
        }
        # The progression question carried two images: the prior and the current; the
        # comparison question carried the prior's signed report.
        assert 2 in scripted_model.image_counts("trajectory")
        assert any(
            "reported as" in q and "Small left pleural effusion" in q
            for q in scripted_model.questions("key differences")
        )

        # A patient whose earlier study only the PACS holds: C-FIND and C-MOVE bring it in.
        in_pacs = StudyIds(patient_id="PRIOR2")
        _, pacs_files = make_study(tmp_path / "pacs", ("PA",), ids=in_pacs, study_date="20240301")
        for path in pacs_files:
            pacs.upload(path)
        current = StudyIds(patient_id="PRIOR2")
        _, current_files = make_study(
            tmp_path / "cur", ("PA", "LATERAL"), ids=current, study_date="20260301"
        )
        stack.push(current_files)
        report = stack.wait_for_draft(current.study_uid)
        prior = _run(stack, report.study_version_pk)["prior"]
        assert prior["source"] == "pacs", prior
        assert prior["study_instance_uid"] == in_pacs.study_uid
        # The fetched prior completes like any study, but is never drafted itself.
        wait_for(
            lambda: any(
                j.state == "done" and j.timings.get("skipped")
                for j in stack.jobs("raddraft.draft_study")
            ),
            60,
            "the fetched prior's draft job to be skipped",
            stack.processes,
        )
        fetched = stack.report(in_pacs.study_uid)
        assert fetched is None or fetched.current_version == 0
    finally:
        stack.stop()


def test_worker_killed_mid_draft_gives_exactly_one_draft(
    production_env: dict[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=400, cols=360)
    env = {**production_env, **_tiny(tiny_checkpoint), "RADDRAFT_MAX_NEW_TOKENS": "24"}
    stack = Stack(tmp_path / "logs", env).start()
    try:
        stack.push(files)
        running = stack.wait_for_jobs("raddraft.draft_study", {"running"}, 1, timeout=120)
        stack.kill9("gpu-worker")  # claimed and reading: the draft is not stored yet
        assert [j.state for j in stack.jobs("raddraft.draft_study")] == ["running"]
        before = stack.report(ids.study_uid)
        assert before is None or before.current_version == 0
        stack.start("gpu-worker")
        report = stack.wait_for_draft(ids.study_uid)
        done = stack.wait_for_jobs("raddraft.draft_study", {"done"}, 1)
    finally:
        stack.stop()
    assert done[0].id == running[0].id and done[0].attempts == 2
    with session_scope(stack.engine) as session:
        versions = session.scalar(
            select(func.count())
            .select_from(ReportVersion)
            .where(ReportVersion.report_pk == report.id)
        )
    assert versions == 1


def test_pacs_down_then_up_and_a_permanent_rejection(
    production_env: dict[str, str],
    orthanc_factory: Any,
    scripted_model: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=400, cols=360)
    pacs = orthanc_factory()
    strict = orthanc_factory(aet="STRICT", check_called_aet=True)
    wrong_aet = f"NOTSTRICT@127.0.0.1:{strict.dicom_port}"
    pacs.stop()
    env = {
        **production_env,
        **_scripted(scripted_model),
        "RADDRAFT_DESTINATIONS": f"{pacs.dicom_node},{wrong_aet}",
    }
    stack = Stack(tmp_path / "logs", env).start()
    try:
        stack.push(files)
        stack.wait_for_draft(ids.study_uid)
        dead = stack.wait_for_jobs("raddraft.export_dicom", {"dead"}, 1)
        assert dead[0].args["destination"] == wrong_aet
        # The rejection (PS3.8 9.3.4 rejected-permanent) dead-letters the job at once. A busy
        # machine may first see a transient failure (a reset before the A-ASSOCIATE-RJ was
        # read); that try is retried, the rejection never is.
        # The worker logs a failure just after recording it.
        wait_for(
            lambda: any(state == "dead" for state, _ in _failures_logged(stack, dead[0].id)),
            10,
            "the io-worker's log of the dead-lettering",
            stack.processes,
        )
        failures = _failures_logged(stack, dead[0].id)
        assert failures and "Rejected Permanent" in failures[-1][1], failures
        assert failures[-1][0] == "dead" and dead[0].attempts == len(failures), failures
        assert all(
            state == "pending" and "Rejected Permanent" not in error
            for state, error in failures[:-1]
        ), failures
        # The PACS that is down: retried with backoff, not dead-lettered.
        wait_for(
            lambda: any(
                j.args["destination"] == str(pacs.dicom_node) and j.attempts >= 2
                for j in stack.jobs("raddraft.export_dicom")
            ),
            60,
            "a second try at the PACS that is down",
            stack.processes,
        )
        pacs.start()
        stack.wait_for_jobs("raddraft.export_dicom", {"done"}, 1, timeout=120)
        time.sleep(2)  # a dead job must stay dead: no retry loop
        assert [
            j.attempts for j in stack.jobs("raddraft.export_dicom") if j.state == jobs.JobState.dead
        ] == [dead[0].attempts]
    finally:
        stack.stop()
    found = _objects_in_orthanc(pacs, ids.study_uid)
    assert len(found["sr"]) == 1 and len(found["gsps"]) == 1, found


RELATIONS = "How do the findings on this chest X-ray relate to each other?"  # stage 4


def _draft_and_trace(stack: Stack, report_pk: int) -> tuple[list[ReportVersion], dict[str, Any]]:
    """The report's versions and what the API's detail shows of it (content, provenance)."""
    with session_scope(stack.engine) as session:
        versions = list(
            session.scalars(select(ReportVersion).where(ReportVersion.report_pk == report_pk))
        )
        session.expunge_all()
        report = session.get(Report, report_pk)
        assert report is not None
        return versions, views.detail(session, report)


def test_the_draft_is_stored_before_the_rest_of_the_trace(
    production_env: dict[str, str], scripted_model: ScriptedModelServer, tmp_path: Path
) -> None:
    """Issue 19: the radiologist waits for the draft, not for the whole trace. Stage 4 is held
    at the model server until the test has seen the stored draft; then the trace follows."""
    scripted_model.hold_on = RELATIONS
    ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=400, cols=360)
    stack = Stack(tmp_path / "logs", {**production_env, **_scripted(scripted_model)}).start()
    try:
        stack.push(files)
        report = stack.wait_for_draft(ids.study_uid)
        assert scripted_model.held.wait(60), "stage 4 was never asked"
        versions, shown = _draft_and_trace(stack, report.id)
        assert [v.number for v in versions] == [1] and versions[0].action == "draft"
        assert shown["version"]["number"] == 1
        assert shown["content"]["impression"] == "Moderate left pleural effusion."
        timings = shown["provenance"]["timings"]
        assert timings["trace"] == "pending" and "stored_trace_s" not in timings
        stages = {row["stage"] for row in shown["provenance"]["stages"]}
        assert stages == {1, 2, 3, "report"}  # what the draft needed, nothing after
        assert stack.trace_state(ids.study_uid) == "pending"

        scripted_model.release.set()
        assert stack.wait_for_trace(ids.study_uid) == "complete"
        after, shown = _draft_and_trace(stack, report.id)
    finally:
        scripted_model.release.set()
        stack.stop()
    # The trace joined the same draft run: no new version, the published content unchanged.
    assert [(v.number, v.content, v.draft_run_pk) for v in after] == [
        (v.number, v.content, v.draft_run_pk) for v in versions
    ]
    timings = shown["provenance"]["timings"]
    assert {row["stage"] for row in shown["provenance"]["stages"]} == {
        1, 2, 3, 4, 5, 6, 7, 8, "report"
    }  # fmt: skip
    assert 0 < timings["stored_draft_s"] <= timings["stored_trace_s"]
    assert 0 < timings["draft_s"] <= timings["trace_s"]
    logged = (stack.log_dir / "gpu-worker.log").read_text(errors="replace")
    assert f"draft stored study={ids.study_uid} " in logged
    wanted = f"drafted study={ids.study_uid} "
    drafted = next(line for line in logged.splitlines() if wanted in line)
    assert "stored_draft_s=" in drafted and "stored_trace_s=" in drafted
    assert "trace=complete" in drafted
    # Building the SR and GSPS says nothing at INFO (highdicom's per-module chatter).
    assert "copy attributes of module" not in logged


def test_a_reading_that_fails_after_its_draft_keeps_the_draft(
    production_env: dict[str, str], scripted_model: ScriptedModelServer, tmp_path: Path
) -> None:
    """The model server fails at stage 4, after the draft was stored: the draft stays (one
    version, the report drafted, its job done), the trace is marked incomplete with the reason."""
    scripted_model.fail_on = RELATIONS
    ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=400, cols=360)
    stack = Stack(tmp_path / "logs", {**production_env, **_scripted(scripted_model)}).start()
    try:
        stack.push(files)
        report = stack.wait_for_draft(ids.study_uid)
        assert stack.wait_for_trace(ids.study_uid) == "incomplete"
        done = stack.wait_for_jobs("raddraft.draft_study", {"done"}, 1)
        versions, shown = _draft_and_trace(stack, report.id)
    finally:
        stack.stop()
    assert done[0].attempts == 1  # not retried: a retry would find the draft and stop
    assert [v.number for v in versions] == [1]
    assert shown["state"] == "drafted"
    assert shown["content"]["impression"] == "Moderate left pleural effusion."
    timings = shown["provenance"]["timings"]
    assert timings["trace"] == "incomplete"
    assert "500" in timings["trace_failure"]
    # What was read before the failure stays: the draft's stages and stage 4 begun.
    assert {row["stage"] for row in shown["provenance"]["stages"]} >= {1, 2, 3, "report"}


def test_a_worker_killed_between_draft_and_trace_leaves_the_draft_and_says_so(
    production_env: dict[str, str], scripted_model: ScriptedModelServer, tmp_path: Path
) -> None:
    """Killed while stage 4 is held: the job runs again, finds the draft, and marks its trace
    incomplete instead of leaving the page saying "still being read" for ever."""
    scripted_model.hold_on = RELATIONS
    ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=400, cols=360)
    stack = Stack(tmp_path / "logs", {**production_env, **_scripted(scripted_model)}).start()
    try:
        stack.push(files)
        report = stack.wait_for_draft(ids.study_uid)
        assert scripted_model.held.wait(60), "stage 4 was never asked"
        stack.kill9("gpu-worker")
        assert stack.trace_state(ids.study_uid) == "pending"
        scripted_model.release.set()
        stack.start("gpu-worker")
        assert stack.wait_for_trace(ids.study_uid) == "incomplete"
        done = stack.wait_for_jobs("raddraft.draft_study", {"done"}, 1)
        versions, shown = _draft_and_trace(stack, report.id)
    finally:
        scripted_model.release.set()
        stack.stop()
    assert done[0].attempts == 2
    assert [v.number for v in versions] == [1]
    assert shown["provenance"]["timings"]["trace_failure"] == pipeline.ORPHANED_TRACE

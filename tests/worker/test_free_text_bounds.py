"""Text from outside reaches the model bounded, and a conversation that cannot fit the model's
context fails once (issue 20, item 8): a 200,000-character indication went to the model whole,
failed on the context length five times and was dead-lettered.

The study arrives through the listener's own ingest, the draft job runs through the job runner
against an OpenAI-compatible test server on loopback.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from sqlalchemy import select
from sqlalchemy.engine import Engine

import dicom_listener
from raddraft import jobs
from raddraft.db import session_scope
from raddraft.job_contract import DraftStudy
from raddraft.settings import Settings
from report_drafts.tables import Report, ReportVersion
from tests.conftest import reload_settings
from tests.dicom_factory import make_cxr, new_uid
from tests.worker.model_server import ScriptedModelServer
from worker import pipeline
from worker.runner import run_job

LIMIT = 1000
HUGE = ("cough and fever for three days " * 7000)[:200_000]


class ContextTooLong:
    """vLLM's answer to a prompt over the context: HTTP 400 with an error object."""

    def __init__(self) -> None:
        self.calls = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                owner.calls += 1
                body = json.dumps(
                    {
                        "object": "error",
                        "message": "This model's maximum context length is 32768 tokens.",
                        "code": 400,
                    }
                ).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _configure(monkeypatch: pytest.MonkeyPatch, url: str) -> Settings:
    monkeypatch.setenv("RADDRAFT_MODEL_BACKEND", "openai")
    monkeypatch.setenv("RADDRAFT_MODEL_SERVER_URL", url)
    monkeypatch.setenv("RADDRAFT_MODEL", "StanfordAIMI/CheXOne")
    monkeypatch.setenv("RADDRAFT_MAX_FREE_TEXT_CHARS", str(LIMIT))
    monkeypatch.setenv("RADDRAFT_JOB_MAX_ATTEMPTS", "5")
    monkeypatch.setattr(pipeline, "_reader", None)  # this test's backend, not a cached one
    return reload_settings()


def _queued_draft(settings: Settings) -> int:
    """A frontal and a lateral view whose Reason for the Requested Procedure is 200,000
    characters, filed and completed: the draft job's id."""
    study, series = new_uid(), new_uid()
    files = []
    for number, view in enumerate(("PA", "LATERAL"), 1):
        ds = make_cxr(
            None,
            study_uid=study,
            series_uid=series,
            view=view,
            rows=96,
            cols=96,
            instance_number=number,
            accession="ACCLONG",
        )
        ds.ReasonForTheRequestedProcedure = HUGE
        buffer = DicomBytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        files.append(buffer.getvalue())
    # One push: its end completes the two-view study, as an association's release would.
    stored = dicom_listener.ingest_batch(files, calling_ae_title="MODALITY", settings=settings)
    assert [r.status for r in stored] == [0, 0]
    with session_scope() as session:
        job = session.scalar(
            select(jobs.Job)
            .where(jobs.Job.key.like("draft:version:%"))
            .order_by(jobs.Job.id.desc())
        )
        assert job is not None
        return job.id


def _texts(request: dict[str, Any]) -> list[str]:
    found = []
    for message in request["messages"]:
        content = message["content"]
        parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content]
        found += [p for p in parts if p]
    return found


pytestmark = pytest.mark.filterwarnings("ignore:The value")  # pydicom on the 200,000 chars


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        _configure(monkeypatch, server.url)
        yield server


def test_a_huge_indication_is_cut_and_flagged_before_the_model(
    engine: Engine, scripted: ScriptedModelServer
) -> None:
    job_id = _queued_draft(reload_settings())
    assert run_job(job_id, DraftStudy, pipeline.draft_job, on_dead=pipeline.draft_failed) == "done"
    longest = max(len(t) for r in scripted.requests for t in _texts(r))
    assert longest < LIMIT + 500, longest  # the prompt around the indication, not 200,000
    asked = [t for r in scripted.requests for t in _texts(r) if "cough and fever" in t]
    assert asked and all(" …" in t for t in asked)
    with session_scope(engine) as session:
        version = session.scalar(select(ReportVersion).order_by(ReportVersion.id))
        assert version is not None
        cut = version.content["extra"]["input_truncated"]
    # The header's indication: the Reason for the Requested Procedure and what else it holds.
    assert cut["indication"]["chars"] >= len(HUGE)
    assert cut["indication"]["kept"] <= LIMIT


def test_a_conversation_over_the_context_fails_once_not_five_times(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ContextTooLong()
    try:
        wired = _configure(monkeypatch, server.url)
        job_id = _queued_draft(wired)
        outcome = run_job(job_id, DraftStudy, pipeline.draft_job, on_dead=pipeline.draft_failed)
    finally:
        server.close()
    assert outcome == "dead"
    assert server.calls == 1
    with session_scope(engine) as session:
        job = session.get(jobs.Job, job_id)
        assert job is not None and job.attempts == 1 and job.state == jobs.JobState.dead
        report = session.scalar(select(Report))
        assert report is not None and report.state == "failed"
        assert "does not fit the model's context" in (report.failure or "")


def test_what_counts_as_not_fitting_and_how_text_is_cut() -> None:
    # transformers' backend (models/_hf.py) says so in words; a model server down does not.
    assert pipeline.not_fitting(
        ValueError("conversation of 40000 tokens exceeds the context (32768)")
    )
    assert not pipeline.not_fitting(
        RuntimeError("model server http://x failed: connection refused")
    )
    assert pipeline.bounded_text("  short  ", 100) == ("short", None)
    text, cut = pipeline.bounded_text("word " * 100, 102)
    assert text.endswith("word …") and len(text) <= 104 and cut == {"chars": 499, "kept": 99}

"""A whole RadDraft as real processes for end-to-end tests: listener, router, workers.

Used by the pipeline tests and the pages tests::

    stack = Stack(tmp_path, env).start()          # env: the test's RADDRAFT_* settings
    stack.push(files)                             # DCMTK storescu to the listener
    report = stack.wait_for_draft(study_uid)      # the draft a real gpu worker made
    stack.stop()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

import report_drafts as drafts
from dicom_listener.tables import Study, StudyVersion
from raddraft import jobs
from raddraft.db import engine_for, session_scope
from report_drafts.tables import Report
from tests.conftest import free_port
from tests.listener_process import TEST_LISTENER_ENV, acknowledged, port_open, storescu
from tests.processes import RadDraftProcess, raddraft_env, wait_for

# Fast timers and a short lease so a killed worker's job comes back within seconds.
STACK_ENV = {
    **TEST_LISTENER_ENV,
    "RADDRAFT_JOB_LEASE_SECONDS": "6",
    "RADDRAFT_JOB_BACKOFF_SECONDS": "1",
    "RADDRAFT_ROUTER_STALE_SECONDS": "15",
    "RADDRAFT_MAX_NEW_TOKENS": "6",
    "RADDRAFT_ALLOWED_CALLERS": "STORESCU,ORTHANC,PACS",
    "RADDRAFT_DICOM_HOST": "127.0.0.1",
    "RADDRAFT_LOG_LEVEL": "INFO",
}

PARTS: dict[str, list[str]] = {
    "listener": ["listen"],
    "router": ["router"],
    "gpu-worker": ["worker", "--queues", "gpu"],
    "io-worker": ["worker", "--queues", "io", "--concurrency", "1"],
}


@dataclass
class Stack:
    """RadDraft's processes on one data directory and database."""

    log_dir: Path
    env: dict[str, str]
    parts: dict[str, list[str]] = field(default_factory=lambda: dict(PARTS))
    port: int = field(default_factory=free_port)
    processes: dict[str, RadDraftProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = raddraft_env(**{**STACK_ENV, **self.env, "RADDRAFT_DICOM_PORT": str(self.port)})

    @property
    def engine(self) -> Engine:
        url = self.env.get("RADDRAFT_DATABASE_URL") or (
            f"sqlite:///{Path(self.env['RADDRAFT_DATA_DIR']).resolve() / 'raddraft.db'}"
        )
        return engine_for(url)

    def start(self, *names: str) -> Stack:
        for name in names or tuple(self.parts):
            self.processes[name] = RadDraftProcess(
                self.parts[name], self.env, self.log_dir / f"{name}.log"
            ).start()
        if any(self.parts[name][0] in ("listen", "up") for name in names or self.parts):
            wait_for(lambda: port_open(self.port), 30, "the listener's port", self.processes)
        return self

    def stop(self, *names: str) -> None:
        for name in names or tuple(self.processes):
            self.processes[name].stop()

    def kill9(self, name: str) -> None:
        self.processes[name].kill9()

    def push(self, files: Sequence[Path], aet: str = "STORESCU") -> list[str]:
        """Send ``files`` with DCMTK storescu; every one must be acknowledged."""
        result = storescu(self.port, files, aet=aet)
        acked = acknowledged(result.stdout + result.stderr)
        assert len(acked) == len(files), f"storescu: {result.stdout}\n{result.stderr}"
        return acked

    def report(self, study_uid: str) -> Report | None:
        """The newest study version's report of the study, if there is one."""
        with session_scope(self.engine) as session:
            return session.scalar(
                select(Report)
                .join(StudyVersion, StudyVersion.id == Report.study_version_pk)
                .join(Study, Study.id == StudyVersion.study_pk)
                .where(Study.study_instance_uid == study_uid)
                .order_by(StudyVersion.number.desc())
            )

    def wait_for_draft(self, study_uid: str, timeout: float = 240) -> Report:
        """Wait until a worker has stored the draft of ``study_uid``."""

        def drafted() -> bool:
            report = self.report(study_uid)
            return report is not None and report.current_version > 0

        wait_for(drafted, timeout, f"the draft of {study_uid}", self.processes)
        report = self.report(study_uid)
        assert report is not None
        return report

    def trace_state(self, study_uid: str) -> str | None:
        """``timings["trace"]`` of the draft run of ``study_uid``'s draft, None before a draft."""
        report = self.report(study_uid)
        if report is None or report.current_version == 0:
            return None
        with session_scope(self.engine) as session:
            run = drafts.draft_run(session, report)
            return None if run is None else str(run.timings.get("trace"))

    def wait_for_trace(self, study_uid: str, timeout: float = 240) -> str:
        """Wait until the draft of ``study_uid`` has its whole trace (or it was marked
        incomplete): the worker stores the draft first and the trace after (issue 19)."""

        def settled() -> bool:
            return self.trace_state(study_uid) not in (None, drafts.TRACE_PENDING)

        wait_for(settled, timeout, f"the trace of {study_uid}", self.processes)
        return str(self.trace_state(study_uid))

    def jobs(self, task: str | None = None) -> list[jobs.Job]:
        with session_scope(self.engine) as session:
            query = select(jobs.Job).order_by(jobs.Job.id)
            if task:
                query = query.where(jobs.Job.task == task)
            return list(session.scalars(query))

    def wait_for_jobs(
        self, task: str, states: set[str], count: int, timeout: float = 120
    ) -> list[jobs.Job]:
        def settled() -> bool:
            found = [j for j in self.jobs(task) if j.state in states]
            return len(found) >= count

        wait_for(settled, timeout, f"{count} {task} job(s) in {sorted(states)}", self.processes)
        return [j for j in self.jobs(task) if j.state in states]

    def log_tails(self) -> dict[str, Any]:
        return {name: proc.log_tail() for name, proc in self.processes.items()}

"""The RIS hears of every step, in order: HL7 ORU P, F, C over MLLP and FHIR PUTs.

Real processes throughout: the listener, router and workers, the web API a radiologist signs
through, a real MLLP listener (hl7apy) as the RIS and a small FHIR server that records PUTs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hl7apy.parser import parse_message
from sqlalchemy import select

from peers.mllp import control_id_of
from raddraft.db import session_scope
from report_drafts.tables import ReportVersion, SentObject
from tests.conftest import free_port
from tests.dicom_factory import make_study
from tests.mllp_listener import Listener, serving
from tests.processes import wait_for
from tests.stack import PARTS, Stack
from tests.worker.model_server import ScriptedModelServer

pytestmark = pytest.mark.slow


class FhirServer:
    """Accepts ``PUT /<Type>/<id>`` and keeps each resource body in arrival order."""

    def __init__(self) -> None:
        self.puts: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.puts.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def statuses(self) -> list[str]:
        return [r["status"] for r in self.puts if r["resourceType"] == "DiagnosticReport"]


@pytest.fixture
def fhir_server() -> Iterator[FhirServer]:
    server = FhirServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def _obr25(message: str) -> str:
    """OBR-25, the result status, read with hl7apy."""
    parsed = parse_message(message.replace("\n", "\r"), find_groups=False)
    return str(parsed.obr.obr_25.value)


def _raddraft(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "raddraft", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_preliminary_final_and_corrected_reach_the_ris_in_order(
    production_env: dict[str, str],
    scripted_model: ScriptedModelServer,
    listener: tuple[Listener, int],
    fhir_server: FhirServer,
    tmp_path: Path,
) -> None:
    ris, ris_port = listener
    web_port = free_port()
    env = {
        **production_env,
        "RADDRAFT_MODEL_BACKEND": "openai",
        "RADDRAFT_MODEL_SERVER_URL": scripted_model.url,
        "RADDRAFT_MODEL": "StanfordAIMI/CheXOne",
        "RADDRAFT_RIS_MLLP": f"127.0.0.1:{ris_port}",
        "RADDRAFT_FHIR_SERVER_URL": fhir_server.url,
        # The preliminary goes out too here (the default holds it until sign-off).
        "RADDRAFT_RELEASE_UNSIGNED_HL7": "send",
        "RADDRAFT_RELEASE_UNSIGNED_FHIR": "send",
        "RADDRAFT_WEB_HOST": "127.0.0.1",
        "RADDRAFT_WEB_PORT": str(web_port),
    }
    stack = Stack(tmp_path / "logs", env, parts={**PARTS, "web": ["web"]})
    token = (
        _raddraft(
            stack.env,
            "users",
            "add",
            "asmith",
            "--role",
            "radiologist",
            "--display-name",
            "Smith^Anna",
        )
        .strip()
        .splitlines()[-1]
    )
    ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=400, cols=360)
    stack.start()
    try:
        stack.push(files)
        report = stack.wait_for_draft(ids.study_uid)
        wait_for(lambda: len(ris.received) >= 1, 90, "the preliminary ORU", stack.processes)
        # Each step waits for both messages: a version signed before its predecessor went out
        # makes the predecessor obsolete (never sent after it), by design.
        wait_for(
            lambda: len(fhir_server.statuses()) >= 1, 90, "the FHIR preliminary", stack.processes
        )
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{web_port}/api",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        wait_for(lambda: _up(api), 60, "the web app", stack.processes)
        detail = api.get(f"/reports/{report.id}").json()
        signed = api.post(
            f"/reports/{report.id}/sign",
            json={"expected_version": detail["current_version"], "edit_reason": "none"},
        )
        assert signed.status_code == 200, signed.text
        wait_for(lambda: len(ris.received) >= 2, 90, "the final ORU", stack.processes)
        wait_for(lambda: len(fhir_server.statuses()) >= 2, 90, "the FHIR final", stack.processes)
        amended = api.post(
            f"/reports/{report.id}/amend",
            json={
                "expected_version": signed.json()["version"]["number"],
                "reason": "laterality",
                "corrected": True,
                "impression": "Moderate RIGHT pleural effusion.",
            },
        )
        assert amended.status_code == 200, amended.text
        wait_for(lambda: len(ris.received) >= 3, 90, "the corrected ORU", stack.processes)
        wait_for(
            lambda: len(fhir_server.statuses()) >= 3, 90, "three FHIR reports", stack.processes
        )
        control_id = control_id_of(ris.received[1])
        trace = _raddraft(stack.env, "trace", control_id)
    finally:
        stack.stop()

    assert [_obr25(m) for m in ris.received] == ["P", "F", "C"]
    assert "RIGHT pleural effusion" in ris.received[2]
    assert fhir_server.statuses() == ["preliminary", "final", "corrected"]
    assert any(r["resourceType"] == "Provenance" for r in fhir_server.puts)
    assert "Smith" in trace and ids.study_uid in trace
    # the send and the RIS's answer to it, from the audit log
    assert f"hl7 {control_id} -> 127.0.0.1:{ris_port}: ok ack_code=AA ack_for={control_id}" in trace
    # Nothing failed on the way, so nothing was sent twice: no io worker lost its database
    # session to another process (a forked child once used its parent's pooled connection).
    assert "job failed" not in (tmp_path / "logs" / "io-worker.log").read_text()


def _up(api: httpx.Client) -> bool:
    try:
        return api.get("/me").status_code == 200
    except httpx.HTTPError:
        return False


def _hl7_rows(stack: Stack) -> list[SentObject]:
    with session_scope(stack.engine) as session:
        rows = list(
            session.scalars(
                select(SentObject).where(SentObject.kind == "hl7").order_by(SentObject.id)
            )
        )
        session.expunge_all()
        return rows


def test_a_ris_down_while_p_waits_sees_only_the_final(
    production_env: dict[str, str],
    scripted_model: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    """The whole stack, the reorder forced: the RIS is down while the ORU P waits for its
    retry, the radiologist signs, the RIS comes back: it gets the F, never the P after it."""
    ris, ris_port = Listener(), free_port()
    web_port = free_port()
    env = {
        **production_env,
        "RADDRAFT_MODEL_BACKEND": "openai",
        "RADDRAFT_MODEL_SERVER_URL": scripted_model.url,
        "RADDRAFT_MODEL": "StanfordAIMI/CheXOne",
        "RADDRAFT_RIS_MLLP": f"127.0.0.1:{ris_port}",
        "RADDRAFT_RELEASE_UNSIGNED_HL7": "send",
        "RADDRAFT_JOB_BACKOFF_SECONDS": "2",
        "RADDRAFT_WEB_HOST": "127.0.0.1",
        "RADDRAFT_WEB_PORT": str(web_port),
    }
    stack = Stack(tmp_path / "logs", env, parts={**PARTS, "web": ["web"]})
    token = (
        _raddraft(stack.env, "users", "add", "asmith", "--role", "radiologist")
        .strip()
        .splitlines()[-1]
    )
    ids, files = make_study(tmp_path / "study", ("PA", "LATERAL"), rows=400, cols=360)
    stack.start()
    try:
        stack.push(files)
        report = stack.wait_for_draft(ids.study_uid)
        wait_for(
            lambda: any(r.attempts >= 1 for r in _hl7_rows(stack)),
            90,
            "a failed attempt at the ORU P",
            stack.processes,
        )
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{web_port}/api",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        wait_for(lambda: _up(api), 60, "the web app", stack.processes)
        detail = api.get(f"/reports/{report.id}").json()
        signed = api.post(
            f"/reports/{report.id}/sign",
            json={"expected_version": detail["current_version"], "edit_reason": "none"},
        )
        assert signed.status_code == 200, signed.text
        with serving(ris, ris_port):
            wait_for(lambda: len(ris.received) >= 1, 120, "the final ORU", stack.processes)
            wait_for(
                lambda: [r.state for r in _hl7_rows(stack)] == ["obsolete", "sent"],
                120,
                "the P obsolete, the F sent",
                stack.processes,
            )
    finally:
        stack.stop()
    assert [_obr25(m) for m in ris.received] == ["F"]
    p_row, f_row = _hl7_rows(stack)
    assert p_row.replaced_by_version == f_row_version(stack, f_row)


def f_row_version(stack: Stack, row: SentObject) -> int:
    with session_scope(stack.engine) as session:
        version = session.get(ReportVersion, row.report_version_pk)
        assert version is not None
        return version.number

"""Late images supersede a draft: the RIS ends on the live draft, whatever the timing.

Real processes (listener, router, gpu worker, two io workers), PostgreSQL and Redis, and a real
MLLP listener as the RIS. The bad timings are forced, not hoped for: the RIS is slow and answers
the first withdrawal AE (so its retry would come after the new draft's ORU P); then the RIS is
down while the next late image supersedes again, and comes back with both jobs due at once. The
RIS files every study version's result under one order (the accession), so it must receive,
for each supersession, the old draft's withdrawal (OBR-25 X) before the new draft's P.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hl7apy.parser import parse_message
from sqlalchemy import select

from peers.mllp import control_id_of
from raddraft.db import session_scope
from report_drafts.tables import Report, ReportVersion, SentObject
from tests.conftest import free_port
from tests.dicom_factory import make_study
from tests.mllp_listener import Listener, serving
from tests.processes import wait_for
from tests.stack import PARTS, Stack
from tests.worker.model_server import ScriptedModelServer

pytestmark = pytest.mark.slow

WITHDRAWAL = "WITHDRAWN:"


def _obr25(message: str) -> str:
    parsed = parse_message(message.replace("\n", "\r"), find_groups=False)
    return str(parsed.obr.obr_25.value)


def _hl7(stack: Stack) -> list[tuple[str, str, int, str]]:
    """Every HL7 row: (control id, state, report id, version action), in the order written."""
    with session_scope(stack.engine) as session:
        return [
            (row.identifier, row.state, report_pk, action)
            for row, report_pk, action in session.execute(
                select(SentObject, ReportVersion.report_pk, ReportVersion.action)
                .join(ReportVersion, ReportVersion.id == SentObject.report_version_pk)
                .where(SentObject.kind == "hl7")
                .order_by(SentObject.id)
            )
        ]


def _accepted(ris: Listener, stack: Stack) -> list[str]:
    """The control ids the RIS holds, in the order it last received each (an AE'd attempt is
    not on file; the retry that was accepted is the one that counts)."""
    sent = {cid for cid, state, _r, _a in _hl7(stack) if state == "sent"}
    last = {control_id_of(m): i for i, m in enumerate(ris.received)}
    return sorted((c for c in last if c in sent), key=last.__getitem__)


def _live_draft_control_id(stack: Stack, study_uid: str) -> str:
    report = stack.report(study_uid)
    assert report is not None
    (cid,) = [c for c, _s, r, a in _hl7(stack) if r == report.id and a == "draft"]
    return cid


def _settled(stack: Stack, drafts: int) -> bool:
    rows = _hl7(stack)
    return sum(a == "draft" for *_x, a in rows) >= drafts and all(
        s in ("sent", "obsolete") for _c, s, _r, _a in rows
    )


def test_late_images_leave_the_ris_on_the_live_draft(
    production_env: dict[str, str], scripted_model: ScriptedModelServer, tmp_path: Path
) -> None:
    ris, ris_port = Listener(), free_port()
    env = {
        **production_env,
        "RADDRAFT_MODEL_BACKEND": "openai",
        "RADDRAFT_MODEL_SERVER_URL": scripted_model.url,
        "RADDRAFT_MODEL": "StanfordAIMI/CheXOne",
        "RADDRAFT_RIS_MLLP": f"127.0.0.1:{ris_port}",
        "RADDRAFT_RELEASE_UNSIGNED_HL7": "send",
        "RADDRAFT_JOB_BACKOFF_SECONDS": "2",
    }
    parts = {**PARTS, "io-worker-2": ["worker", "--queues", "io", "--concurrency", "1"]}
    stack = Stack(tmp_path / "logs", env, parts=parts)
    ids, files = make_study(tmp_path / "v1", ("PA", "LATERAL"), rows=400, cols=360)
    _, late = make_study(tmp_path / "v2", ("PA",), ids=ids, rows=400, cols=360)
    _, later = make_study(tmp_path / "v3", ("PA",), ids=ids, rows=400, cols=360)
    stack.start()
    try:
        with serving(ris, ris_port):
            stack.push(files)
            stack.wait_for_draft(ids.study_uid)
            wait_for(lambda: _settled(stack, 1), 90, "the first ORU P", stack.processes)
            # A slow RIS that refuses the first withdrawal once: its retry is due after the
            # new draft's job has run.
            ris.delay = 0.5
            ris.script_for[WITHDRAWAL] = ["AE"]
            stack.push(late)
            wait_for(lambda: _settled(stack, 2), 180, "the second draft sent", stack.processes)
            first = _accepted(ris, stack)
            live_after_first = _live_draft_control_id(stack, ids.study_uid)
        # The RIS is down while the next late image supersedes the draft again.
        ris.delay = 0.0
        stack.push(later)
        wait_for(
            lambda: sum(a == "draft" for *_x, a in _hl7(stack)) >= 3,
            180,
            "the third draft",
            stack.processes,
        )
        with serving(ris, ris_port):
            wait_for(lambda: _settled(stack, 3), 180, "everything sent", stack.processes)
        accepted = _accepted(ris, stack)
        live = _live_draft_control_id(stack, ids.study_uid)
    finally:
        stack.stop()

    by_cid = {control_id_of(m): m for m in ris.received}
    assert [_obr25(by_cid[c]) for c in first] == ["P", "X", "P"]
    assert first[-1] == live_after_first
    # Each supersession: the old draft's withdrawal, then the new draft; the RIS's last word
    # is the live draft's P.
    assert [_obr25(by_cid[c]) for c in accepted] == ["P", "X", "P", "X", "P"]
    assert accepted[:3] == first and accepted[-1] == live
    with session_scope(stack.engine) as session:
        states = sorted(r.state for r in session.scalars(select(Report)))
    assert states == ["drafted", "superseded", "superseded"]

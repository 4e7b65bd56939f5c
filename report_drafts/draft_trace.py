"""The reading trace that arrives after its draft (issue 19: the draft first).

The worker stores the draft (:func:`report_drafts.record_draft`, version 1) as soon as the turns
the report needs are read, with the trace read so far and ``timings["trace"] = "pending"``. The
rest of the trace (CXRTrek stages 4-8) follows; these functions attach it to the same draft run.
They write only the :class:`DraftRun` row: never a report version, never what was published.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from report_drafts.states import NotFound
from report_drafts.tables import DraftRun

#: ``DraftRun.timings["trace"]``: the draft is stored and the rest of the reading goes on ...
TRACE_PENDING = "pending"
#: ... every stage of the reading is in ``DraftRun.stages`` ...
TRACE_COMPLETE = "complete"
#: ... or the reading failed after its draft was stored (``timings["trace_failure"]`` says why).
TRACE_INCOMPLETE = "incomplete"

_FAILURE_LIMIT = 2000  # characters of an error kept with the run: bounded whatever was raised


def _locked_run(session: Session, draft_run_pk: int) -> DraftRun:
    run = session.scalar(select(DraftRun).where(DraftRun.id == draft_run_pk).with_for_update())
    if run is None:
        raise NotFound(f"no draft run {draft_run_pk}")
    return run


def record_trace(
    session: Session,
    draft_run_pk: int,
    *,
    stages: Sequence[Mapping[str, Any]],
    timings: Mapping[str, Any],
) -> DraftRun:
    """The complete trace of draft run ``draft_run_pk``: ``stages`` (every row, the draft's
    first) replace the stored ones and ``timings`` are merged into the stored ones; the trace is
    marked complete. A trace already marked complete is left as it is (a re-run)."""
    run = _locked_run(session, draft_run_pk)
    if run.timings.get("trace") == TRACE_COMPLETE:
        return run
    run.stages = [dict(row) for row in stages]
    run.timings = {**run.timings, **timings, "trace": TRACE_COMPLETE}
    session.flush()
    return run


def mark_trace_incomplete(
    session: Session,
    draft_run_pk: int,
    reason: str,
    *,
    stages: Sequence[Mapping[str, Any]] | None = None,
    timings: Mapping[str, Any] | None = None,
) -> DraftRun:
    """The reading failed after the draft of ``draft_run_pk`` was stored: the draft stays, its
    trace is marked incomplete with ``reason``; ``stages``, when given, are what was read before
    the failure (the draft's rows first), else the rows stored with the draft are kept."""
    run = _locked_run(session, draft_run_pk)
    if run.timings.get("trace") == TRACE_COMPLETE:
        return run
    if stages is not None:
        run.stages = [dict(row) for row in stages]
    run.timings = {
        **run.timings,
        **(timings or {}),
        "trace": TRACE_INCOMPLETE,
        "trace_failure": reason[:_FAILURE_LIMIT],
    }
    session.flush()
    return run

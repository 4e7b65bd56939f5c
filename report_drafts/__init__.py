"""report_drafts: the bookkeeper of drafts: versions, sign-off, audit, the review API.

The public face, for the worker and the pages (imported lazily: ``raddraft.tables`` imports
``report_drafts.tables`` for Alembic, which must not pull in pydicom or FastAPI):

Worker:
    ``mark_state(session, study_version_pk, state, *, reason="") -> Report``
    ``record_draft(session, *, study_version_pk, content, run, algorithm, settings=None)
    -> ReportVersion``
    ``pending_sends(session, report_version_pk, *, kinds=("sr", "gsps"), destination=None)
    -> list[SentObject]``, ``outbox_file(settings, sent_object) -> Path``
    ``record_sent(session, sent_object_pk, *, ok, error=None) -> SentObject``
Radiologists and administrators (the API calls these):
    ``open_report``, ``edit_text``, ``finding_feedback``, ``sign``, ``reject``, ``amend``,
    ``requeue``, ``retry_job``
Read side:
    ``reader_figures``, ``trace``, ``fhir_resources``, ``create_app``
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mark_state": "report_drafts.lifecycle",
    "record_draft": "report_drafts.lifecycle",
    "pending_sends": "report_drafts.lifecycle",
    "record_sent": "report_drafts.lifecycle",
    "open_report": "report_drafts.lifecycle",
    "edit_text": "report_drafts.lifecycle",
    "finding_feedback": "report_drafts.lifecycle",
    "sign": "report_drafts.lifecycle",
    "reject": "report_drafts.lifecycle",
    "amend": "report_drafts.lifecycle",
    "requeue": "report_drafts.lifecycle",
    "retry_job": "report_drafts.lifecycle",
    "outbox_file": "report_drafts.publish",
    "fhir_resources": "report_drafts.publish",
    "reader_figures": "report_drafts.figures",
    "trace": "report_drafts.trace",
    "add_user": "report_drafts.users",
    "create_app": "report_drafts.api",
    "ReportState": "report_drafts.states",
    "LifecycleError": "report_drafts.states",
    "IllegalTransition": "report_drafts.states",
    "StaleVersion": "report_drafts.states",
    "PermissionDenied": "report_drafts.states",
    "NotFound": "report_drafts.states",
    "InvalidRequest": "report_drafts.states",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'report_drafts' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

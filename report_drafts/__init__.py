"""report_drafts: the bookkeeper of drafts: versions, sign-off, audit, what leaves, the pages.

The public face, for the worker and the ``raddraft`` command. Each name lives in the module of
whoever acts:

The worker (:mod:`report_drafts.drafting`, :mod:`report_drafts.outbox`):
    ``mark_state(session, study_version_pk, state, *, reason="") -> Report``
    ``record_draft(session, *, study_version_pk, content, run, algorithm, settings=None)
    -> ReportVersion``
    ``pending_sends(session, report_version_pk, *, kinds=("sr", "gsps"), destination=None)
    -> list[SentObject]``, ``outbox_file(settings, sent_object) -> Path``,
    ``materialise(session, settings, relative) -> Path`` (any outbox object, from the database)
    ``claim_sends(session, settings, report_version_pk, *, kinds, destination) -> Claim``:
    what a job sends now, in version order (:mod:`report_drafts.delivery`)
    ``record_sent(session, sent_object_pk, *, ok, error=None, response=None) -> SentObject``,
    ``release(session, sent_object_pks)`` (claimed, not tried)
Radiologists (:mod:`report_drafts.signoff`):
    ``open_report``, ``edit_text``, ``finding_feedback``, ``add_finding``, ``sign``, ``reject``,
    ``amend``
Orders (:mod:`report_drafts.order_effects`):
    ``apply_order``, ``order_for_draft``
Critical findings (:mod:`report_drafts.notifications`):
    ``notification``, ``record_notification``, ``recent_notifications``
Administrators (:mod:`report_drafts.admin`):
    ``requeue``, ``retry_job``
Reads (:mod:`report_drafts.versions` and others):
    ``get_report``, ``report_for_study_version``, ``version``, ``current_content``,
    ``report_text``, ``demo_mode``, ``reader_figures``, ``trace``, ``fhir_resources``
Retention (:mod:`report_drafts.retention`, the policy; the purge is the listener's):
    ``retention_verdicts``, ``purge_candidates``, ``still_purgeable``, ``record_purge``,
    ``Verdict``
Values: the content types of a draft (:mod:`report_drafts.content`) and the lifecycle's states
and errors (:mod:`report_drafts.states`).
The text sanitiser (:mod:`report_drafts.text_safety`), between the model and everything else:
    ``safe_content(content) -> ReportContent``, ``visible(text) -> str``

The web app is :func:`report_drafts.web.create_web_app`; it is not imported here, so a worker
never loads FastAPI.
"""

from __future__ import annotations

from report_drafts.admin import requeue, retry_job
from report_drafts.content import (
    DEMO_WARNING,
    Algorithm,
    Box,
    Finding,
    ReportContent,
    ReportStatus,
    Signer,
)
from report_drafts.delivery import Claim, SendItem, claim_sends, record_sent, release
from report_drafts.drafting import mark_state, record_draft
from report_drafts.figures import reader_figures
from report_drafts.notifications import notification, recent_notifications, record_notification
from report_drafts.order_effects import apply_order, order_for_draft
from report_drafts.outbox import (
    OutboxPayloadError,
    fhir_resources,
    materialise,
    outbox_file,
    pending_sends,
)
from report_drafts.retention import Verdict, purge_candidates, record_purge, still_purgeable
from report_drafts.retention import verdicts as retention_verdicts
from report_drafts.signoff import (
    add_finding,
    amend,
    edit_text,
    finding_feedback,
    open_report,
    reject,
    sign,
)
from report_drafts.states import (
    SIGNED_STATES,
    IllegalTransition,
    InvalidRequest,
    LifecycleError,
    NotFound,
    PermissionDenied,
    ReportState,
    StaleVersion,
)
from report_drafts.text_safety import safe_content, visible
from report_drafts.trace import trace
from report_drafts.users import add_user
from report_drafts.versions import (
    current_content,
    demo_mode,
    get_report,
    report_for_study_version,
    report_text,
    version,
)

__all__ = [
    "DEMO_WARNING",
    "SIGNED_STATES",
    "Algorithm",
    "Box",
    "Claim",
    "Finding",
    "IllegalTransition",
    "InvalidRequest",
    "LifecycleError",
    "NotFound",
    "OutboxPayloadError",
    "PermissionDenied",
    "ReportContent",
    "ReportState",
    "ReportStatus",
    "SendItem",
    "Signer",
    "StaleVersion",
    "Verdict",
    "add_finding",
    "add_user",
    "amend",
    "apply_order",
    "claim_sends",
    "current_content",
    "demo_mode",
    "edit_text",
    "fhir_resources",
    "finding_feedback",
    "get_report",
    "mark_state",
    "materialise",
    "notification",
    "open_report",
    "order_for_draft",
    "outbox_file",
    "pending_sends",
    "purge_candidates",
    "reader_figures",
    "recent_notifications",
    "record_draft",
    "record_notification",
    "record_purge",
    "record_sent",
    "reject",
    "release",
    "report_for_study_version",
    "report_text",
    "requeue",
    "retention_verdicts",
    "retry_job",
    "safe_content",
    "sign",
    "still_purgeable",
    "trace",
    "version",
    "visible",
]

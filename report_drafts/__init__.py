"""report_drafts: the bookkeeper of drafts: versions, sign-off, audit, the outbox, delivery.

The public face, for the worker, the web tier and the ``raddraft`` command; nothing outside this
package imports its modules. Each name lives in the module of whoever acts:

The worker (:mod:`report_drafts.drafting`, :mod:`report_drafts.outbox`):
    ``mark_state``, ``record_draft``; ``materialise`` (any outbox object, from the
    database); ``claim_sends``, ``record_sent``, ``release``: what a job sends now, in version
    order (:mod:`report_drafts.delivery`); ``record_trace``, ``mark_trace_incomplete``: the
    rest of the reading trace, after its draft (:mod:`report_drafts.draft_trace`)
Radiologists (:mod:`report_drafts.signoff`):
    ``open_report``, ``edit_text``, ``finding_feedback``, ``add_finding``, ``sign``, ``reject``,
    ``amend``
Orders (:mod:`report_drafts.order_effects`):
    ``apply_order``, ``order_for_draft``
Critical findings (:mod:`report_drafts.notifications`):
    ``notification``, ``record_notification``, ``recent_notifications``
Administrators (:mod:`report_drafts.admin`):
    ``requeue``, ``retry_job``, ``resolve_identity``
The read side, for the web tier's read models (pages, API, DICOMweb, FHIR, queue, metrics):
    ``get_report``, ``report_for_study_version``, ``version``, ``current_content``,
    ``draft_run``, ``report_text``, ``demo_mode``, ``reader_figures``, ``trace``,
    ``fhir_resources``, ``fhir_resources_for_page``, ``fhir_id_for``, ``source_instances``,
    what FHIR shows of a report (:mod:`report_drafts.fhir_view`: ``PUBLISHED_ACTIONS``,
    ``WITHDRAWN_BY``, ``WITHDRAWN_STATUS``, ``Report.fhir_status`` and ``fhir_updated_at``, and
    the kept totals ``fhir_reports_shown``, ``fhir_studies_shown``),
    ``render_png``, ``audit_for_study``,
    ``record_audit``, ``retention_figures``, ``user_for_password``, ``user_for_token``,
    ``capability_statement``, and the tables it queries (``Report``, ``ReportVersion``,
    ``DraftRun``, ``SentObject``, ``AuditEvent``, ``User`` and their enums)
Users and sign-in (:mod:`report_drafts.users`, for the pages and the ``raddraft`` command):
    ``end_sessions``, ``rotate_token``, ``set_password``, ``disable_user``; the sign-in
    limit ``sign_in_wait``, ``record_sign_in_failure``, ``clear_sign_in_failures``,
    ``password_subject``, ``TOKEN_SUBJECT``
Retention (:mod:`report_drafts.retention`, the policy; the purge is the listener's):
    ``retention_verdicts``, ``purge_candidates``, ``still_purgeable``, ``record_purge``,
    ``Verdict``
Values: the content types of a draft (:mod:`report_drafts.content`) and the lifecycle's states
and errors (:mod:`report_drafts.states`).
The findings' coded vocabulary (:mod:`report_drafts.vocabulary`): ``finding_labels`` (what the
worker asks the model about), ``finding_page_names`` (what the pages offer)
The text sanitiser (:mod:`report_drafts.text_safety`), between the model and everything else:
    ``safe_content``, ``visible``, ``clean_text``, ``removed_count``
"""

from __future__ import annotations

from report_drafts.admin import requeue, resolve_identity, retry_job
from report_drafts.audit import for_study as audit_for_study
from report_drafts.audit import record as record_audit
from report_drafts.builders import capability_statement, fhir_id_for
from report_drafts.content import (
    DEMO_WARNING,
    DRAFT_WARNING,
    Algorithm,
    Box,
    Finding,
    ReportContent,
)
from report_drafts.delivery import Claim, claim_sends, record_sent, release
from report_drafts.draft_trace import (
    TRACE_COMPLETE,
    TRACE_INCOMPLETE,
    TRACE_PENDING,
    mark_trace_incomplete,
    record_trace,
)
from report_drafts.drafting import mark_state, record_draft
from report_drafts.fhir_view import PUBLISHED_ACTIONS, WITHDRAWN_BY, WITHDRAWN_STATUS
from report_drafts.fhir_view import reports_shown as fhir_reports_shown
from report_drafts.fhir_view import studies_shown as fhir_studies_shown
from report_drafts.figures import reader_figures
from report_drafts.notifications import (
    acknowledge_notification,
    escalate_unacknowledged,
    notification,
    recent_notifications,
    record_notification,
)
from report_drafts.order_effects import apply_order, order_for_draft
from report_drafts.outbox import (
    OutboxPayloadError,
    fhir_resources,
    fhir_resources_for_page,
    materialise,
    source_instances,
)
from report_drafts.reconcile import UNCERTAIN_MARK
from report_drafts.render import render_png
from report_drafts.retention import (
    Verdict,
    purge_candidates,
    record_purge,
    retention_figures,
    still_purgeable,
)
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
    EDITABLE,
    SIGNED_STATES,
    InvalidRequest,
    LifecycleError,
    NotFound,
    ReportState,
)
from report_drafts.tables import (
    AuditEvent,
    DraftRun,
    EditReason,
    Report,
    ReportVersion,
    Role,
    SentKind,
    SentObject,
    SentState,
    User,
)
from report_drafts.text_safety import clean_text, removed_count, safe_content, visible
from report_drafts.trace import trace
from report_drafts.users import (
    TOKEN_SUBJECT,
    clear_sign_in_failures,
    disable_user,
    end_sessions,
    password_subject,
    record_sign_in_failure,
    rotate_token,
    set_password,
    sign_in_wait,
    user_for_password,
    user_for_token,
)
from report_drafts.version_reads import (
    current_content,
    demo_mode,
    draft_run,
    get_report,
    report_for_study_version,
    report_text,
    served_outbox_uids,
    version,
)
from report_drafts.vocabulary import labels as finding_labels
from report_drafts.vocabulary import page_names as finding_page_names

__all__ = [
    "DEMO_WARNING",
    "DRAFT_WARNING",
    "EDITABLE",
    "PUBLISHED_ACTIONS",
    "SIGNED_STATES",
    "TOKEN_SUBJECT",
    "TRACE_COMPLETE",
    "TRACE_INCOMPLETE",
    "TRACE_PENDING",
    "UNCERTAIN_MARK",
    "WITHDRAWN_BY",
    "WITHDRAWN_STATUS",
    "Algorithm",
    "AuditEvent",
    "Box",
    "Claim",
    "DraftRun",
    "EditReason",
    "Finding",
    "InvalidRequest",
    "LifecycleError",
    "NotFound",
    "OutboxPayloadError",
    "Report",
    "ReportContent",
    "ReportState",
    "ReportVersion",
    "Role",
    "SentKind",
    "SentObject",
    "SentState",
    "User",
    "Verdict",
    "acknowledge_notification",
    "add_finding",
    "amend",
    "apply_order",
    "audit_for_study",
    "capability_statement",
    "claim_sends",
    "clean_text",
    "clear_sign_in_failures",
    "current_content",
    "demo_mode",
    "disable_user",
    "draft_run",
    "edit_text",
    "end_sessions",
    "escalate_unacknowledged",
    "fhir_id_for",
    "fhir_reports_shown",
    "fhir_resources",
    "fhir_resources_for_page",
    "fhir_studies_shown",
    "finding_feedback",
    "finding_labels",
    "finding_page_names",
    "get_report",
    "mark_state",
    "mark_trace_incomplete",
    "materialise",
    "notification",
    "open_report",
    "order_for_draft",
    "password_subject",
    "purge_candidates",
    "reader_figures",
    "recent_notifications",
    "record_audit",
    "record_draft",
    "record_notification",
    "record_purge",
    "record_sent",
    "record_sign_in_failure",
    "record_trace",
    "reject",
    "release",
    "removed_count",
    "render_png",
    "report_for_study_version",
    "report_text",
    "requeue",
    "resolve_identity",
    "retention_figures",
    "retention_verdicts",
    "retry_job",
    "rotate_token",
    "safe_content",
    "served_outbox_uids",
    "set_password",
    "sign",
    "sign_in_wait",
    "source_instances",
    "still_purgeable",
    "trace",
    "user_for_password",
    "user_for_token",
    "version",
    "visible",
]

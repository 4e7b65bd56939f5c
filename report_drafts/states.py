"""The report lifecycle as an explicit transition table, and the errors the lifecycle raises.

A report moves only along the edges below. Everything that could turn an AI draft into a final
report goes through :func:`check_transition`, so an edge missing here is a path that cannot be
taken, whatever endpoint or function is called.
"""

from __future__ import annotations

import enum


class ReportState(enum.StrEnum):
    queued = "queued"  # the study version waits for a worker
    drafting = "drafting"  # a worker runs the model
    drafted = "drafted"  # a preliminary AI draft, nobody opened it yet
    in_review = "in_review"  # a radiologist opened or edited it
    signed = "signed"  # final, verified by a named radiologist
    rejected = "rejected"  # a radiologist refused the draft; nothing final was written
    superseded = "superseded"  # a later study version's draft replaces it
    failed = "failed"  # drafting failed; an administrator may requeue
    amended = "amended"  # changed after signing
    corrected = "corrected"  # an error put right after signing


S = ReportState

# Who may move where. Signing is only reachable from a draft a radiologist has in front of them
# (drafted/in_review); after signing only amendment or correction, never back to preliminary.
TRANSITIONS: dict[ReportState, frozenset[ReportState]] = {
    S.queued: frozenset({S.drafting, S.drafted, S.failed, S.superseded}),
    S.drafting: frozenset({S.drafted, S.failed, S.queued, S.superseded}),
    S.failed: frozenset({S.queued, S.drafting, S.drafted, S.superseded}),
    S.drafted: frozenset({S.in_review, S.signed, S.rejected, S.superseded}),
    S.in_review: frozenset({S.in_review, S.signed, S.rejected, S.superseded}),
    S.rejected: frozenset({S.superseded}),
    S.superseded: frozenset(),
    S.signed: frozenset({S.amended, S.corrected}),
    S.amended: frozenset({S.amended, S.corrected}),
    S.corrected: frozenset({S.amended, S.corrected}),
}

# States in which the report's text is still an unsigned AI draft a radiologist may change.
EDITABLE = frozenset({S.drafted, S.in_review})
# States reached by a radiologist's signature.
SIGNED_STATES = frozenset({S.signed, S.amended, S.corrected})
# States without any draft content yet (worker-owned).
PRE_DRAFT = frozenset({S.queued, S.drafting, S.failed})


class LifecycleError(Exception):
    """Base of the lifecycle's refusals; the API maps each kind to an HTTP status."""

    http_status = 400


class NotFound(LifecycleError):
    http_status = 404


class PermissionDenied(LifecycleError):
    http_status = 403


class IllegalTransition(LifecycleError):
    """The report's state does not allow this action (HTTP 409)."""

    http_status = 409

    def __init__(self, current: str, wanted: str, action: str = "") -> None:
        self.current = current
        self.wanted = wanted
        what = f"{action}: " if action else ""
        super().__init__(f"{what}a report in state {current!r} cannot become {wanted!r}")


class StaleVersion(LifecycleError):
    """The request names a version that is no longer current: replayed or raced (HTTP 409)."""

    http_status = 409

    def __init__(self, expected: int, current: int) -> None:
        self.expected = expected
        self.current = current
        super().__init__(
            f"the request was made against version {expected} but the report is at version "
            f"{current}; reload and decide again"
        )


class InvalidRequest(LifecycleError):
    http_status = 422


#: The version actions that end an unsigned draft and withdraw what was sent of it
#: (``withdraw_version``: an IOCM rejection note, HL7 OBR-25 X, FHIR entered-in-error), and how
#: the withdrawal says why.
WITHDRAWING_ACTIONS = {
    "reject": "AI draft rejected",
    "supersede": "AI draft superseded",
    "order_cancelled": "AI draft withdrawn: order cancelled",
}


def check_transition(current: str, wanted: ReportState, action: str = "") -> None:
    """Raise :class:`IllegalTransition` unless ``current -> wanted`` is in the table."""
    if wanted not in TRANSITIONS[ReportState(current)]:
        raise IllegalTransition(current, wanted, action)

"""The reader-study figures from recorded sign-offs and per-finding feedback.

CheXOne's reader study reported the share of drafts signed with no edit, the edit reasons and
the drafting time. RadDraft measures the same from its own versions: a report counts as signed
"with no edit" when its first final version is identical to the AI draft (text unchanged, no
finding rejected or edited), whatever reason the radiologist ticked; the ticked reasons are
counted separately. Time to sign runs from the radiologist's first opening to the signature.
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from report_drafts.tables import FindingFeedback, ReportVersion


@dataclass(frozen=True)
class ReaderFigures:
    signed: int
    signed_without_edit: int
    share_signed_without_edit: float | None
    edit_reasons: dict[str, int] = field(default_factory=dict)
    median_seconds_to_sign: float | None = None
    mean_edit_ratio: float | None = None
    feedback: dict[str, int] = field(default_factory=dict)  # accept/reject/edit/add counts
    # Per label: how often radiologists accepted, rejected, edited or added (the model missed).
    feedback_by_label: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def reader_figures(
    session: Session, *, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> ReaderFigures:
    """Figures over first signatures (action ``sign``) made in [since, until)."""
    # Only the two columns read, never the versions' content.
    query = select(ReportVersion.edit_reason, ReportVersion.diff).where(
        ReportVersion.action == "sign"
    )
    if since is not None:
        query = query.where(ReportVersion.created_at >= since)
    if until is not None:
        query = query.where(ReportVersion.created_at < until)
    signs = list(session.execute(query).tuples())
    reasons: dict[str, int] = {"none": 0, "content": 0, "style": 0, "both": 0}
    for reason, _diff in signs:
        reasons[reason or "none"] = reasons.get(reason or "none", 0) + 1
    diffs = [diff or {} for _reason, diff in signs]
    unchanged = sum(1 for diff in diffs if diff.get("unchanged"))
    seconds = [float(d["seconds_to_sign"]) for d in diffs if "seconds_to_sign" in d]
    ratios = [float(d["edit_ratio"]) for d in diffs if "edit_ratio" in d]

    fb_query = select(FindingFeedback.action, func.count()).group_by(FindingFeedback.action)
    if since is not None:
        fb_query = fb_query.where(FindingFeedback.at >= since)
    if until is not None:
        fb_query = fb_query.where(FindingFeedback.at < until)
    feedback = {"accept": 0, "reject": 0, "edit": 0, "add": 0}
    feedback.update({action: int(count) for action, count in session.execute(fb_query)})

    return ReaderFigures(
        signed=len(signs),
        signed_without_edit=unchanged,
        share_signed_without_edit=unchanged / len(signs) if signs else None,
        edit_reasons=reasons,
        median_seconds_to_sign=statistics.median(seconds) if seconds else None,
        mean_edit_ratio=statistics.fmean(ratios) if ratios else None,
        feedback=feedback,
        feedback_by_label=_by_label(session, since, until),
    )


def _by_label(
    session: Session, since: dt.datetime | None, until: dt.datetime | None
) -> dict[str, dict[str, int]]:
    """Feedback counts per finding label (the label before an edit; the new one for an add)."""
    query = select(FindingFeedback.action, FindingFeedback.before, FindingFeedback.after)
    if since is not None:
        query = query.where(FindingFeedback.at >= since)
    if until is not None:
        query = query.where(FindingFeedback.at < until)
    counts: dict[str, dict[str, int]] = {}
    for action, before, after in session.execute(query):
        label = str((before or {}).get("label") or (after or {}).get("label") or "?")
        per = counts.setdefault(label, {"accept": 0, "reject": 0, "edit": 0, "add": 0})
        per[action] = per.get(action, 0) + 1
    return dict(sorted(counts.items()))

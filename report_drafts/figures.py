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

from sqlalchemy import case, func, select
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
    """Figures over first signatures (action ``sign``) made in [since, until).

    Counted in the database from the versions' ``diff`` fields (never their content); only
    the times to sign come back one by one, for the median.
    """
    window = [ReportVersion.action == "sign"]
    if since is not None:
        window.append(ReportVersion.created_at >= since)
    if until is not None:
        window.append(ReportVersion.created_at < until)
    unchanged_flag = ReportVersion.diff["unchanged"].as_boolean()
    ratio = ReportVersion.diff["edit_ratio"].as_float()
    reasons: dict[str, int] = {"none": 0, "content": 0, "style": 0, "both": 0}
    signed = unchanged = ratio_count = 0
    ratio_sum = 0.0
    for reason, count, flagged, ratios, with_ratio in session.execute(
        select(
            ReportVersion.edit_reason,
            func.count(),
            func.sum(case((unchanged_flag.is_(True), 1), else_=0)),
            func.sum(ratio),
            func.count(ratio),
        )
        .where(*window)
        .group_by(ReportVersion.edit_reason)
    ):
        reasons[reason or "none"] = reasons.get(reason or "none", 0) + int(count)
        signed += int(count)
        unchanged += int(flagged or 0)
        ratio_sum += float(ratios or 0.0)
        ratio_count += int(with_ratio or 0)
    to_sign = ReportVersion.diff["seconds_to_sign"].as_float()
    seconds = [float(v) for v in session.scalars(select(to_sign).where(*window)) if v is not None]

    fb_query = select(FindingFeedback.action, func.count()).group_by(FindingFeedback.action)
    if since is not None:
        fb_query = fb_query.where(FindingFeedback.at >= since)
    if until is not None:
        fb_query = fb_query.where(FindingFeedback.at < until)
    feedback = {"accept": 0, "reject": 0, "edit": 0, "add": 0}
    feedback.update({action: int(count) for action, count in session.execute(fb_query)})

    return ReaderFigures(
        signed=signed,
        signed_without_edit=unchanged,
        share_signed_without_edit=unchanged / signed if signed else None,
        edit_reasons=reasons,
        median_seconds_to_sign=statistics.median(seconds) if seconds else None,
        mean_edit_ratio=ratio_sum / ratio_count if ratio_count else None,
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

"""Plain values the templates show: stage groups, image windows, urgency flags, time labels.

Kept apart from the routes so each piece is a small function that can be tested alone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_listener import Instance, Series, Study, is_frontal
from report_drafts import UNCERTAIN_MARK, DraftRun, ReportVersion, finding_page_names, visible

#: The labels the model is asked about (CheXpert's 13), offered when adding a missed finding.
FINDING_LABELS = finding_page_names()

PRIORITY_LABELS = {0: "STAT", 1: "High", 2: "Routine", 3: "Low"}

STATE_LABELS = {
    "queued": "Queued",
    "drafting": "Drafting",
    "drafted": "Draft ready",
    "in_review": "In review",
    "signed": "Signed",
    "rejected": "Rejected",
    "superseded": "Superseded",
    "failed": "Failed",
    "amended": "Amended",
    "corrected": "Corrected",
}


def urgent_labels(critical: list[str]) -> list[str]:
    """The critical findings a version suspects (``content.critical``: the lifecycle's reading
    of the site's RADDRAFT_CRITICAL_FINDINGS, negation and hedges included), as the worklist
    shows them."""
    return [term[:1].upper() + term[1:] for term in critical]


def is_urgent(label: str, critical: list[str]) -> bool:
    """Whether a finding's label names one of the critical findings its version suspects."""
    text = label.lower()
    return any(term.removesuffix(UNCERTAIN_MARK) in text for term in critical)


def priority_label(priority: int) -> str:
    return PRIORITY_LABELS.get(priority, str(priority))


def state_label(state: str) -> str:
    return STATE_LABELS.get(state, state)


def parse_time(value: str | dt.datetime | None) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def time_label(value: str | dt.datetime | None) -> str:
    """UTC wall time, minutes precision: ``2024-05-01 10:15 UTC``."""
    when = parse_time(value)
    if when is None:
        return ""
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def age_label(seconds: float | None) -> str:
    """A short duration: ``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    if seconds is None:
        return ""
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def since_label(value: str | dt.datetime | None, now: dt.datetime) -> str:
    when = parse_time(value)
    if when is None:
        return ""
    return age_label((now - when).total_seconds())


def study_date_label(value: str) -> str:
    """DICOM DA ``YYYYMMDD`` as ``YYYY-MM-DD``."""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def person_name(value: str) -> str:
    """DICOM PN ``Family^Given`` as ``Family, Given``."""
    parts = [p for p in value.split("^") if p]
    if len(parts) >= 2:
        return f"{parts[0]}, {' '.join(parts[1:])}"
    return value


@dataclass
class StageTurn:
    question: str
    answer: str
    reasoning: str = ""
    kind: str = ""
    truncated: bool = False  # cut by the model's token limit: incomplete
    conversation: str = ""  # "cxrtrek" (the staged reading) or "single-turn"


@dataclass
class StageGroup:
    number: int | str
    name: str
    seconds: float | None = None
    mode: str = ""
    skipped: str = ""
    turns: list[StageTurn] = field(default_factory=list)


def stage_groups(stages: list[Any] | None) -> list[StageGroup]:
    """The model's stages, grouped, whatever shape the worker stored.

    Accepts both a list of stages each holding ``turns`` (the staged reading's own form) and a
    flat list of ``{stage, question, answer, reasoning}`` items.
    """
    groups: dict[Any, StageGroup] = {}
    for item in stages or []:
        if not isinstance(item, dict):
            continue
        number = item.get("stage", "?")
        group = groups.get(number)
        if group is None:
            group = groups[number] = StageGroup(number=number, name=str(item.get("name", "")))
        if isinstance(item.get("seconds"), int | float):
            group.seconds = (group.seconds or 0.0) + float(item["seconds"])
        group.mode = str(item.get("mode", group.mode) or "")
        if item.get("skipped"):
            # The worker stores the reason in "skipped" itself; older rows used "skip_reason".
            reason = item.get("skip_reason") or item.get("skipped")
            group.skipped = reason if isinstance(reason, str) else "no reason recorded"
        turns = item.get("turns")
        if isinstance(turns, list):
            for turn in turns:
                if isinstance(turn, dict):
                    group.turns.append(_turn(turn))
        elif "question" in item or "answer" in item:
            group.turns.append(_turn(item))
    return sorted(groups.values(), key=lambda g: (not isinstance(g.number, int), g.number))


def _turn(item: dict[str, Any]) -> StageTurn:
    # The raw model answers, their control characters shown rather than sent to the browser.
    return StageTurn(
        question=visible(str(item.get("question", ""))),
        answer=visible(str(item.get("answer", ""))),
        reasoning=visible(str(item.get("reasoning", "") or "")),
        kind=str(item.get("kind", "") or ""),
        truncated=bool(item.get("truncated")),
        conversation=str(item.get("conversation", "") or ""),
    )


@dataclass(frozen=True)
class Window:
    """The slider range and start of an image's window/level, in modality (rescaled) units."""

    low: float
    high: float
    center: float | None
    width: float | None


def image_window(path: Path) -> Window:
    """Read the header of the archived file: its pixel range and its own window, if any."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError):
        return Window(0.0, 4095.0, None, None)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    bits = int(getattr(ds, "BitsStored", 12) or 12)
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    raw_low, raw_high = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    )
    low, high = sorted((raw_low * slope + intercept, raw_high * slope + intercept))
    center = width = None
    wc, ww = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if wc is not None and ww is not None:
        center = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
        width = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
    return Window(low, high, center, width)


#: The actions that end a report's wait for a radiologist, and how the worklist says so.
DECIDED = {"sign": "signed", "reject": "rejected"}


def decided(session: Session, report_ids: list[int]) -> dict[int, tuple[str, dt.datetime]]:
    """When each of these reports was first signed or rejected (its wait's end), and which."""
    if not report_ids:
        return {}
    rows = session.execute(
        select(ReportVersion.report_pk, ReportVersion.action, func.min(ReportVersion.created_at))
        .where(ReportVersion.report_pk.in_(report_ids), ReportVersion.action.in_(DECIDED))
        .group_by(ReportVersion.report_pk, ReportVersion.action)
    )
    found: dict[int, tuple[str, dt.datetime]] = {}
    for report_pk, action, at in rows:
        if report_pk not in found or at < found[report_pk][1]:
            found[report_pk] = (DECIDED[action], at)
    return found


def waiting_label(
    start: str | dt.datetime | None, now: dt.datetime, ended: tuple[str, dt.datetime] | None
) -> str:
    """How long a report has waited; once signed or rejected, how long it had waited then."""
    if ended is None:
        return since_label(start, now)
    how, at = ended
    return f"{how} after {since_label(start, at)}"


def demo_versions(session: Session, study_version_pks: list[int]) -> set[int]:
    """Which of these study versions were drafted by a demo model."""
    if not study_version_pks:
        return set()
    return set(
        session.scalars(
            select(DraftRun.study_version_pk).where(
                DraftRun.study_version_pk.in_(study_version_pks), DraftRun.demo.is_(True)
            )
        )
    )


def prior_instances(
    session: Session, prior: dict[str, Any] | None
) -> tuple[Study | None, list[Instance]]:
    """The prior study the draft compared with, and its archived images (frontal first)."""
    uid = (prior or {}).get("study_instance_uid")
    if not uid:
        return None, []
    study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    if study is None:
        return None, []
    instances = list(
        session.scalars(
            select(Instance)
            .join(Series, Series.id == Instance.series_pk)
            .where(Series.study_pk == study.id)
            .order_by(Instance.id)
        )
    )
    # Frontal first, by the rule the listener chose the images to read by.
    instances.sort(key=lambda i: not is_frontal(i.view_position, i.view_code))
    return study, instances

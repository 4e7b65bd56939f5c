"""Reading reports and their versions: lookups every side of the lifecycle shares.

Nothing here writes. The worker (:mod:`report_drafts.drafting`), the radiologist's actions
(:mod:`report_drafts.signoff`), the administrator's (:mod:`report_drafts.admin`), the outbox and
the pages all read reports through these functions.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from dicom_listener import Study
from raddraft import jobs
from raddraft.db import utcnow
from report_drafts.content import Algorithm, ReportContent
from report_drafts.states import IllegalTransition, NotFound, ReportState
from report_drafts.tables import DraftRun, Report, ReportVersion


def get_report(session: Session, report_pk: int, *, lock: bool = False) -> Report:
    """The report ``report_pk``; ``lock`` holds its row until commit (PostgreSQL FOR UPDATE)."""
    query = select(Report).where(Report.id == report_pk)
    if lock:
        query = query.with_for_update()
    report = session.scalar(query)
    if report is None:
        raise NotFound(f"no report {report_pk}")
    return report


def report_for_study_version(session: Session, study_version_pk: int) -> Report | None:
    """The report of a study version, or None before anything was recorded for it."""
    return session.scalar(select(Report).where(Report.study_version_pk == study_version_pk))


def version(session: Session, report_pk: int, number: int) -> ReportVersion:
    """Version ``number`` of a report; :class:`NotFound` when it has none such."""
    row = session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_pk == report_pk, ReportVersion.number == number
        )
    )
    if row is None:
        raise NotFound(f"report {report_pk} has no version {number}")
    return row


def current_version(session: Session, report: Report) -> ReportVersion:
    """The report's head version; refused before the first draft."""
    if report.current_version == 0:
        raise IllegalTransition(report.state, ReportState.drafted, "no draft yet")
    return version(session, report.id, report.current_version)


def current_content(session: Session, report: Report) -> ReportContent:
    """What the head version says."""
    return ReportContent.from_json(current_version(session, report).content)


def study_uid(session: Session, report: Report) -> str:
    """The Study Instance UID the report belongs to (audit events are filed under it)."""
    return session.scalars(
        select(Study.study_instance_uid).where(Study.id == report.study_pk)
    ).one()


def draft_run(session: Session, report: Report) -> DraftRun | None:
    """The model run behind the report's AI draft (version 1), if there is one."""
    first = session.scalar(
        select(ReportVersion).where(ReportVersion.report_pk == report.id, ReportVersion.number == 1)
    )
    if first is None or first.draft_run_pk is None:
        return None
    return session.get(DraftRun, first.draft_run_pk)


def algorithm_of(run: DraftRun | None) -> Algorithm:
    """The model and program that wrote a draft, as the builders name it."""
    if run is None:
        return Algorithm(name="unknown", version="", program_version="")
    return Algorithm(
        name=run.model_id,
        version=run.model_revision,
        program_version=run.program_version,
        demo=run.demo,
    )


def demo_mode(session: Session, live_within: dt.timedelta = dt.timedelta(minutes=5)) -> bool:
    """Whether demo output is around: a live worker runs the demo model, or a report that is
    not superseded was drafted by it. Pages, ``/healthz`` and the queue say so loudly then."""
    since = utcnow() - live_within
    worker_demo = session.scalar(
        select(exists().where(jobs.WorkerBeat.demo.is_(True), jobs.WorkerBeat.last_seen >= since))
    )
    if worker_demo:
        return True
    live_demo = session.scalar(
        select(
            exists().where(
                DraftRun.demo.is_(True),
                DraftRun.study_version_pk == Report.study_version_pk,
                Report.state != ReportState.superseded,
            )
        )
    )
    return bool(live_demo)


def report_text(content: ReportContent) -> str:
    """The report's text as a reader sees it: findings, impression, comparison."""
    parts = [content.findings_text, content.impression]
    if content.progression:
        parts.append(content.progression)
    return "\n\n".join(parts)


def diff_stats(draft: ReportContent, now: ReportContent) -> dict[str, Any]:
    """How far ``now`` is from the AI draft: the reader study's text-change figure."""
    a, b = report_text(draft), report_text(now)
    ratio = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    by_uid = {f.tracking_uid: f for f in draft.findings}
    rejected = sum(1 for f in now.findings if not f.accepted)
    edited = sum(
        1
        for f in now.findings
        if f.tracking_uid in by_uid
        and (f.label != by_uid[f.tracking_uid].label or f.box != by_uid[f.tracking_uid].box)
    )
    # Findings a radiologist added (the model missed them): the draft was not signed as written.
    added = sum(1 for f in now.findings if f.tracking_uid not in by_uid)
    return {
        "text_changed": a != b,
        "edit_ratio": round(1.0 - ratio, 6),
        "chars_draft": len(a),
        "chars_now": len(b),
        "findings_rejected": rejected,
        "findings_edited": edited,
        "findings_added": added,
        "unchanged": a == b and rejected == 0 and edited == 0 and added == 0,
    }


def served_outbox_uids(session: Session, study_pks: Sequence[int]) -> list[tuple[int, str]]:
    """(study pk, SOP Instance UID) of RadDraft's own objects its DICOMweb serves, per IHE IOCM
    (Rad TF-1 37, Rad TF-2 4.66): every version's SR and GSPS, except those a later version's
    rejection note (KOS, "Rejected for Quality Reasons") withdrew, and the rejection notes.

    A rejection note references every SR and GSPS the report's versions built before it
    (:func:`report_drafts.outbox.build_withdrawal_dicom`), so those are the ones withheld.
    """
    rows = session.execute(
        select(ReportVersion, Report.study_pk)
        .join(Report, Report.id == ReportVersion.report_pk)
        .where(Report.study_pk.in_(list(study_pks)))
        .order_by(Report.id, ReportVersion.number.desc())
    )
    served: list[tuple[int, str]] = []
    withdrawn_reports: set[int] = set()
    for version, study_pk in rows:
        # Newest first: once a report's rejection note is seen, its older objects are withheld.
        if version.rejection_note_uid:
            served.append((study_pk, version.rejection_note_uid))
            withdrawn_reports.add(version.report_pk)
            continue
        if version.report_pk in withdrawn_reports:
            continue
        uids = [version.sr_sop_instance_uid, *version.gsps_sop_instance_uids]
        served.extend((study_pk, uid) for uid in uids if uid)
    return served

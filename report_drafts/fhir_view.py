"""What FHIR shows of a report, kept on the report's head as its versions are written.

A DiagnosticReport shows a report's latest *published* version (the AI draft, the signature,
each amendment or correction); once an unsigned draft is withdrawn (rejected, superseded) it
reads ``entered-in-error``, as it was pushed, for good (a withdrawal always follows a draft and
nothing is published after it). :func:`follow` keeps this on the report's head in the
transaction that writes the version (:func:`report_drafts._version_writes.new_version`, the one
place versions are written):

- ``Report.fhir_status``: the DiagnosticReport.status shown, ``None`` while FHIR shows nothing
  of the report (no draft yet);
- ``Report.fhir_updated_at``: when the last published or withdrawing version was written (what
  ``_lastUpdated`` searches).

Both are indexed (migration 0013, which also fills them for the versions written before it), so
a FHIR search matches and pages on the report rows alone, whatever the archive holds. The
totals of the searches a RIS runs without narrowing (by status only, or ImagingStudy with no
parameter) are kept as counts (:mod:`raddraft.counters`), exact in every transaction:

- ``fhir_reports`` (status): reports FHIR shows, by the status they show;
- ``fhir_studies`` (): studies with an ImagingStudy (a report FHIR shows).
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from raddraft import counters
from report_drafts.states import WITHDRAWING_ACTIONS
from report_drafts.tables import Report, ReportVersion

#: Versions whose content RadDraft publishes (sends, and FHIR shows).
PUBLISHED_ACTIONS = ("draft", "sign", "amend", "correct")
#: Versions that withdraw an unsigned draft, and how the withdrawal says so.
WITHDRAWN_BY = WITHDRAWING_ACTIONS
WITHDRAWN_STATUS = "entered-in-error"
#: The kept counts (see the module).
REPORTS_COUNT = "fhir_reports"
STUDIES_COUNT = "fhir_studies"
#: Any number, the same in every process: the first key of the PostgreSQL advisory lock that
#: makes "the study's first report FHIR shows" one decision per study.
_STUDY_LOCK = 0x4648_4952  # "FHIR"


def shown_status(current: str | None, action: str, status: str) -> str | None:
    """The status FHIR shows after a version with ``action`` and ``status`` is written to a
    report that showed ``current``."""
    if action in WITHDRAWN_BY or current == WITHDRAWN_STATUS:
        return WITHDRAWN_STATUS
    if action in PUBLISHED_ACTIONS:
        return status
    return current


def follow(session: Session, report: Report, row: ReportVersion) -> None:
    """Keep what FHIR shows of ``report`` (and the kept counts) after writing ``row``."""
    before = report.fhir_status
    after = shown_status(before, row.action, row.status)
    if row.action in PUBLISHED_ACTIONS or row.action in WITHDRAWN_BY:
        report.fhir_updated_at = row.created_at
    if after == before:
        return
    report.fhir_status = after
    if before is not None:
        counters.add(session, REPORTS_COUNT, before, -1)
    if after is not None:
        counters.add(session, REPORTS_COUNT, after, 1)
    if before is None and _first_of_study(session, report):
        counters.add(session, STUDIES_COUNT, "", 1)


def _first_of_study(session: Session, report: Report) -> bool:
    """Whether no other report of the study is shown: then the study's ImagingStudy appears.

    Two reports of one study (two study versions) may be drafted at once: on PostgreSQL a lock
    on the study, held to the end of the transaction, lets one of them decide at a time, and
    the second sees the first's committed head (each statement reads afresh, READ COMMITTED).
    SQLite lets one writer at a time in any case."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_STUDY_LOCK, report.study_pk)))
    other = exists().where(
        Report.study_pk == report.study_pk,
        Report.id != report.id,
        Report.fhir_status.is_not(None),
    )
    return not session.scalar(select(other))


def reports_shown(session: Session, statuses: Collection[str] | None = None) -> int:
    """How many reports FHIR shows (with one of ``statuses``, when given), from the counts."""
    totals = counters.by_labels(counters.read(session, (REPORTS_COUNT,)), REPORTS_COUNT)
    return int(
        sum(count for (status,), count in totals.items() if statuses is None or status in statuses)
    )


def studies_shown(session: Session) -> int:
    """How many studies have an ImagingStudy (a report FHIR shows), from the counts."""
    return int(counters.read(session, (STUDIES_COUNT,)).get((STUDIES_COUNT, ""), 0.0))

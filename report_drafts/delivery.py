"""Ordered delivery: a report's objects reach each destination in version order, newest wins.

A report's versions each have their own export job (:mod:`raddraft.job_contract`), each with its
own retries and backoff; left alone, a retried preliminary could reach the RIS after the final.
So a job does not simply send its version's pending rows: it *claims* them
(:func:`claim_sends`), in one transaction that holds the report's row lock (PostgreSQL) or the
database's write lock (SQLite), and the claim decides, per destination:

- a **later** version of the same report has objects for this destination: this version's
  undelivered objects are ``obsolete`` (``replaced_by_version`` names that version) and nothing
  is sent. A final is therefore never followed by a preliminary, nor a withdrawal by the draft
  it withdraws;
- an **earlier** version's objects are being sent right now (``sending``, their job not dead):
  not yet, the job comes back shortly (:attr:`Claim.wait`), so the older message arrives
  first;
- an earlier version's objects still waiting (``pending``, ``failed``, ``held``) will never be
  sent: they become ``obsolete``, replaced by this version;
- a **withdrawal** (a rejected or superseded draft) of which nothing earlier reached the
  destination has nothing to withdraw: ``obsolete`` too, and said why;
- **another report of the same study** (an earlier study version's, superseded by late
  images) has an object in flight here, or a withdrawal still to deliver, written before this
  version: not yet (:func:`_study_waits`). The RIS files every study version's result under
  the one order, so the superseded draft's withdrawal must arrive before the new draft.

Otherwise the rows become ``sending`` and the job sends them; :func:`record_sent` and
:func:`release` close the claim. For FHIR, each DiagnosticReport carries the ETag the server
gave the version RadDraft last wrote there (``If-Match``), so the server refuses an update
that would overwrite a version RadDraft did not write.

"Destination" is the PACS for DICOM objects; the RIS and the FHIR server are single, so their
kinds are ordered whatever address a row was recorded with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from raddraft import job_contract, jobs
from raddraft.db import utcnow
from raddraft.settings import Settings
from report_drafts import audit
from report_drafts.outbox import outbox_file
from report_drafts.states import WITHDRAWING_ACTIONS, NotFound
from report_drafts.tables import Report, ReportVersion, SentKind, SentObject, SentState
from report_drafts.version_reads import study_uid

#: Version actions that withdraw what was sent of a report (IOCM note, HL7 W, FHIR
#: entered-in-error).
WITHDRAWAL_ACTIONS = frozenset(WITHDRAWING_ACTIONS)
#: A row in one of these states may still be (or have been) delivered by its own job.
CLAIMABLE = (SentState.pending, SentState.failed, SentState.sending)
#: Undelivered rows a later version makes obsolete.
UNDELIVERED = (SentState.pending, SentState.failed, SentState.held, SentState.sending)


@dataclass(frozen=True)
class SendItem:
    """One claimed object: its row, the peer's identifier, the payload, the expected ETag."""

    sent_object_pk: int
    identifier: str
    path: Path
    if_match: str | None = None


@dataclass
class Claim:
    """What a job may send now for its version and destination."""

    items: list[SendItem] = field(default_factory=list)
    #: This version's rows made obsolete by a later version (or as a needless withdrawal).
    obsolete: int = 0
    #: Earlier versions' rows made obsolete by this one.
    replaced: int = 0
    #: Earlier versions' rows being sent right now: try again shortly.
    wait: bool = False
    reason: str = ""


def _lock_report(session: Session, version_pk: int) -> tuple[ReportVersion, Report]:
    """Take the report's write lock before reading anything (see the module docstring).

    The first statement writes (a no-op update of the report head), so on PostgreSQL the
    report's row is locked and on SQLite the transaction holds the write lock from its start:
    two jobs of one report decide one after the other, never from the same stale snapshot.
    """
    report_pk = (
        select(ReportVersion.report_pk).where(ReportVersion.id == version_pk).scalar_subquery()
    )
    session.execute(
        update(Report)
        .where(Report.id == report_pk)
        .values(updated_at=Report.updated_at)
        .execution_options(synchronize_session=False)
    )
    version_row = session.get(ReportVersion, version_pk)
    if version_row is None:
        raise NotFound(f"no report version {version_pk}")
    report = session.get(Report, version_row.report_pk)
    assert report is not None
    return version_row, report


def _report_rows(
    session: Session, report: Report, kinds: Sequence[str], destination: str | None
) -> list[tuple[SentObject, int, str]]:
    """Every row of the report for these kinds (and destination), with version number/action."""
    query = (
        select(SentObject, ReportVersion.number, ReportVersion.action)
        .join(ReportVersion, ReportVersion.id == SentObject.report_version_pk)
        .where(ReportVersion.report_pk == report.id, SentObject.kind.in_(list(kinds)))
        .order_by(ReportVersion.number, SentObject.id)
    )
    if destination is not None:
        query = query.where(SentObject.destination == destination)
    return [(row, int(number), str(action)) for row, number, action in session.execute(query)]


def _make_obsolete(
    session: Session,
    rows: Sequence[SentObject],
    *,
    report: Report,
    version: int,
    replaced_by: int | None,
    why: str,
) -> None:
    for row in rows:
        row.state = SentState.obsolete
        row.replaced_by_version = replaced_by
        row.last_error = why
        audit.record(
            session,
            "obsolete",
            study_instance_uid=study_uid(session, report),
            report_pk=report.id,
            version=version,
            detail={
                "kind": row.kind,
                "identifier": row.identifier,
                "destination": row.destination,
                "replaced_by_version": replaced_by,
                "why": why,
            },
        )


def _job_key(row: SentObject) -> str:
    """The key of the job that sends ``row`` (:mod:`raddraft.job_contract`)."""
    if row.kind == SentKind.hl7:
        return job_contract.SendHl7(row.report_version_pk).key
    if row.kind == SentKind.fhir:
        return job_contract.PushFhir(row.report_version_pk).key
    return job_contract.ExportDicom(row.report_version_pk, row.destination).key


def _in_flight(session: Session, row: SentObject) -> bool:
    """A row its job is sending now. A ``sending`` row whose job is dead-lettered (its worker
    failed even to record the outcome) is not waited for: it counts as undelivered."""
    if row.state != SentState.sending:
        return False
    state = session.scalar(select(jobs.Job.state).where(jobs.Job.key == _job_key(row)))
    return state not in (jobs.JobState.dead, jobs.JobState.done)


def _will_be_sent(session: Session, row: SentObject) -> bool:
    """A row its job is sending now or will still try (pending or failed, job not finished)."""
    if row.state not in CLAIMABLE:
        return False
    state = session.scalar(select(jobs.Job.state).where(jobs.Job.key == _job_key(row)))
    return state not in (jobs.JobState.dead, jobs.JobState.done)


def _study_waits(
    session: Session,
    version_row: ReportVersion,
    report: Report,
    kinds: Sequence[str],
    destination: str | None,
) -> bool:
    """Whether another report of the same study must reach this destination first.

    The RIS and PACS key results on the order (accession, OBR-3), which every study version's
    report shares, so the order of delivery spans reports: versions written earlier (lower
    ``report_versions.id``; a superseded draft's withdrawal is written before the draft that
    replaces it) come first. A job waits for an earlier report's object in flight, and for an
    earlier withdrawal still to be delivered, so the RIS never ends on "withdrawn" while a live
    draft waits (HL7 v2.5.1 7.3.1 OBR-25 X after P would cancel the order's result).
    """
    query = (
        select(SentObject, ReportVersion.action)
        .join(ReportVersion, ReportVersion.id == SentObject.report_version_pk)
        .join(Report, Report.id == ReportVersion.report_pk)
        .where(
            Report.study_pk == report.study_pk,
            Report.id != report.id,
            ReportVersion.id < version_row.id,
            SentObject.kind.in_(list(kinds)),
            SentObject.state.in_(list(CLAIMABLE)),
        )
    )
    if destination is not None:
        query = query.where(SentObject.destination == destination)
    for row, action in session.execute(query):
        if _in_flight(session, row):
            return True
        if str(action) in WITHDRAWAL_ACTIONS and _will_be_sent(session, row):
            return True
    return False


def _if_match(row: SentObject, earlier: Sequence[tuple[SentObject, int, str]]) -> str | None:
    """The ETag of the last version of this FHIR DiagnosticReport RadDraft delivered."""
    if not row.identifier.startswith("DiagnosticReport/"):
        return None
    for other, _number, _action in reversed(earlier):
        if other.identifier == row.identifier and other.state == SentState.sent:
            etag = (other.response or {}).get("etag")
            return str(etag) if etag else None
    return None


def claim_sends(
    session: Session,
    settings: Settings,
    report_version_pk: int,
    *,
    kinds: Sequence[str],
    destination: str | None,
) -> Claim:
    """Decide, under the report's lock, what this version's job sends now (module docstring).

    Claimed rows are ``sending`` when the caller's transaction commits; close the claim with
    :func:`record_sent` per object and :func:`release` for those not tried.
    """
    version_row, report = _lock_report(session, report_version_pk)
    rows = _report_rows(session, report, kinds, destination)
    mine = [r for r, _n, _a in rows if r.report_version_pk == version_row.id]
    own = [r for r in mine if r.state in CLAIMABLE]
    if not own:
        return Claim()
    later = sorted({n for r, n, _a in rows if n > version_row.number})
    if later:
        why = f"replaced by version {later[0]}, sent instead; never sent after it"
        _make_obsolete(
            session, own, report=report, version=version_row.number, replaced_by=later[0], why=why
        )
        session.flush()
        return Claim(obsolete=len(own), reason=why)
    earlier = [(r, n, a) for r, n, a in rows if n < version_row.number]
    if any(_in_flight(session, r) for r, _n, _a in earlier):
        return Claim(wait=True, reason="an earlier version is being sent to this destination")
    if _study_waits(session, version_row, report, kinds, destination):
        return Claim(
            wait=True,
            reason="an earlier report of this study is being sent or withdrawn here first",
        )
    waiting = [r for r, _n, _a in earlier if r.state in UNDELIVERED]
    by_version: dict[int, list[SentObject]] = {}
    for r, n, _a in earlier:
        if r.state in UNDELIVERED:
            by_version.setdefault(n, []).append(r)
    for number, stale in by_version.items():
        _make_obsolete(
            session,
            stale,
            report=report,
            version=number,
            replaced_by=version_row.number,
            why=f"replaced by version {version_row.number} before it was delivered",
        )
    if version_row.action in WITHDRAWAL_ACTIONS and not any(
        r.state == SentState.sent for r, _n, _a in earlier
    ):
        why = "nothing of this report reached the destination: no withdrawal needed"
        _make_obsolete(
            session, own, report=report, version=version_row.number, replaced_by=None, why=why
        )
        session.flush()
        return Claim(obsolete=len(own), replaced=len(waiting), reason=why)
    items = []
    for row in own:
        row.state = SentState.sending
        items.append(
            SendItem(row.id, row.identifier, outbox_file(settings, row), _if_match(row, earlier))
        )
    session.flush()
    return Claim(items=items, replaced=len(waiting))


def release(session: Session, sent_object_pks: Sequence[int]) -> None:
    """Put claimed rows that were not tried (a failure stopped the rest) back to ``pending``."""
    for pk in sent_object_pks:
        row = session.get(SentObject, pk)
        if row is not None and row.state == SentState.sending:
            row.state = SentState.pending
    session.flush()


def record_sent(
    session: Session,
    sent_object_pk: int,
    *,
    ok: bool,
    error: str | None = None,
    response: dict[str, Any] | None = None,
) -> SentObject:
    """Record one attempt to send an object and what the peer answered, in the audit log too.

    ``response`` is the peer's answer (MLLP ACK code and control ids, DICOM status, HTTP
    status and ETag); ``raddraft trace`` shows it.
    """
    row = session.get(SentObject, sent_object_pk)
    if row is None:
        raise NotFound(f"no sent object {sent_object_pk}")
    row.attempts += 1
    row.response = dict(response or {})
    if ok:
        row.state = SentState.sent
        row.sent_at = utcnow()
        row.last_error = None
    else:
        row.state = SentState.failed
        row.last_error = (error or "failed")[:4000]
    version_row = session.get(ReportVersion, row.report_version_pk)
    report = session.get(Report, version_row.report_pk) if version_row else None
    audit.record(
        session,
        "message" if row.kind in ("hl7", "fhir") else "export",
        study_instance_uid=study_uid(session, report) if report else "",
        report_pk=report.id if report else None,
        version=version_row.number if version_row else None,
        detail={
            "kind": row.kind,
            "identifier": row.identifier,
            "destination": row.destination,
            "ok": ok,
            "attempt": row.attempts,
            "error": row.last_error,
            "response": row.response,
        },
    )
    session.flush()
    return row

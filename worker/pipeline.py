"""The processor: from a complete, eligible study version to a stored draft.

``draft_job`` is the body of the ``raddraft.draft_study`` task. It is safe to run twice for the
same study version (a re-delivered message, a worker killed mid-draft): the lifecycle stores one
draft per study version and returns the existing one to a second caller, and the tracking UIDs
of findings are derived from the study version, so a re-run says the same thing in the same words.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from pydicom.uid import generate_uid

import dicom_listener
import models
import orders
import report_drafts
from raddraft import __version__ as raddraft_version
from raddraft.db import session_scope
from raddraft.job_contract import ApplyOrder, DraftStudy
from raddraft.logging import kv
from raddraft.settings import Settings, get_settings
from report_drafts import Algorithm, Box, Finding, ReportContent
from worker import image_cache, priors
from worker.errors import PermanentError
from worker.reader_config import reader_config

log = logging.getLogger(__name__)

_reader: models.Reader | None = None
_reader_lock = threading.Lock()  # a threads pool (studies_in_flight > 1) loads it once


def load_reader(settings: Settings) -> models.ModelInfo:
    """Load the model for this process (once); a worker calls this before taking tasks."""
    global _reader
    with _reader_lock:
        if _reader is None:
            _reader = models.load_reader(reader_config(settings))
            log.info(
                "model loaded %s",
                kv(
                    model=_reader.model.model_id,
                    demo=_reader.model.demo,
                    backend=_reader.model.backend,
                ),
            )
        return _reader.model


def draft_job(job_id: int, args: DraftStudy) -> dict[str, Any]:
    """Draft study version ``args.study_version_pk``; returns stage timings in seconds."""
    settings = get_settings()
    job_started = time.monotonic()  # the stored draft's and trace's times count from here
    version_pk = args.study_version_pk
    with session_scope() as session:
        study = dicom_listener.study_for_version(session, version_pk)
        if priors.is_retrieved_prior(session, study.study_instance_uid):
            log.info(
                "not drafting a study fetched as a prior %s", kv(study=study.study_instance_uid)
            )
            return {"skipped": "retrieved as a prior"}
        existing = report_drafts.report_for_study_version(session, version_pk)
        if existing is not None and existing.current_version > 0:
            _close_orphaned_trace(session, existing, study.study_instance_uid)
            return {"skipped": "already drafted"}
        order = matching_order(session, study)
        if not _order_allows(session, version_pk, order):
            log.info("not drafting: order cancelled %s", kv(accession=study.accession_number))
            return {"skipped": "order cancelled"}
        report_drafts.mark_state(session, version_pk, "drafting")
        images = priors.frontal_first(dicom_listener.version_images(session, version_pk))
    # Every image of the study, not only the two read: the SR and GSPS reference them all.
    images = image_cache.localize(settings, images, study.study_instance_uid)
    current = _current_images(images)
    if not current:
        raise PermanentError(f"study version {version_pk} has no image to read")

    timings: dict[str, Any] = {}
    prior = priors.find_prior(settings, study)
    if prior.images and prior.study_instance_uid:
        prior = dataclasses.replace(
            prior,
            images=image_cache.localize(settings, prior.images, prior.study_instance_uid),
        )
    timings["prior_s"] = round(prior.seconds, 4)

    # The RIS order's reason for study is the indication of record; the header's otherwise.
    # Both come from outside, as does a prior's report text: each is bounded (issue 20).
    limit = settings.max_free_text_chars
    indication, cut_indication = bounded_text(
        (order.indication if order else "") or study.indication, limit
    )
    prior_report, cut_prior = bounded_text(prior.report_text or "", limit)
    cut = {k: v for k, v in (("indication", cut_indication), ("prior_report", cut_prior)) if v}

    load_reader(settings)
    assert _reader is not None
    draft = _DraftStore(
        settings, study, version_pk, images, prior.to_json(), cut, timings, started=job_started
    )
    try:
        reading = _reader.read(
            [models.StudyImage.from_path(image.path) for image in current],
            [models.StudyImage.from_path(image.path) for image in prior.images] or None,
            indication=indication or None,
            prior_report=prior_report or None,
            on_draft=draft.store,
        )
    except _OrderCancelled:
        return {**timings, "skipped": "order cancelled"}
    except Exception as error:
        if draft.stored is not None:
            # The radiologist has the draft: it stays; the trace says why it stops short.
            return draft.trace_failed(error)
        if not_fitting(error):
            # The same conversation will not fit on the next try either: fail once, say why.
            raise PermanentError(
                f"the conversation does not fit the model's context: {error}"
            ) from error
        raise
    return draft.trace_done(reading)


#: Why a trace stays short when the job that stored its draft stopped before storing the trace.
ORPHANED_TRACE = "the reading stopped before its trace was stored (its worker ended); draft kept"


def _close_orphaned_trace(session: Any, report: report_drafts.Report, study_uid: str) -> None:
    """A job runs again only when its last try ended (its lease lapsed): a trace still pending
    then will never arrive, so it is marked incomplete instead of "still being read" forever."""
    run = report_drafts.draft_run(session, report)
    if run is not None and run.timings.get("trace") == report_drafts.TRACE_PENDING:
        report_drafts.mark_trace_incomplete(session, run.id, ORPHANED_TRACE)
        log.warning("trace incomplete %s", kv(study=study_uid, error=ORPHANED_TRACE))


class _OrderCancelled(Exception):
    """The order was cancelled while the model read: nothing is stored, the reading stops."""


@dataclasses.dataclass
class _Stored:
    report_id: int
    report_version: int
    draft_run_pk: int


class _DraftStore:
    """Stores a study version's draft as soon as the reader has what the report needs (its
    ``on_draft`` hook, issue 19: the radiologist waits for the draft, not the whole trace), then
    attaches the rest of the trace to the same draft run when the reading completes or fails.

    With ``report_source=single_turn`` (the default) the reader calls the hook after stages 1-3
    and the single-turn report prompts, so the draft's findings and impression come from those
    turns only; stages 4-8 follow. With ``report_source=staged`` the report needs stage 8, so the
    reader calls the hook at the end and the draft is stored after the whole reading, as before.
    """

    def __init__(
        self,
        settings: Settings,
        study: dicom_listener.StudyInfo,
        version_pk: int,
        images: list[dicom_listener.ArchivedImage],
        prior: dict[str, Any],
        cut: dict[str, Any],
        timings: dict[str, Any],
        *,
        started: float,
    ) -> None:
        self.settings, self.study, self.version_pk = settings, study, version_pk
        self.images, self.prior, self.cut, self.timings = images, prior, cut, timings
        self.started = started  # the job's start: what the radiologist's wait counts from
        self.stored: _Stored | None = None
        self.reading: models.Reading | None = None
        self.findings = 0

    def store(self, reading: models.Reading) -> None:
        """The reader's ``on_draft``: store version 1 with the trace read so far."""
        built = time.monotonic()
        self.reading = reading
        self.timings["draft_s"] = round(reading.draft_seconds, 4)
        study = self.study
        content = report_content(
            reading, study_version_uid=f"{study.study_instance_uid}.v{self.version_pk}"
        )
        if self.cut:  # shown with the draft: what the model read of each text was cut
            extra = {**content.extra, "input_truncated": self.cut}
            content = dataclasses.replace(content, extra=extra)
        algorithm = Algorithm(
            name=reading.model.model_id,
            version=reading.model.revision or "unversioned",
            program_version=f"raddraft {raddraft_version}; {reading.program_version}",
            demo=reading.model.demo,
        )
        run = {
            "stages": stage_rows(reading),  # a snapshot: the reading goes on after this
            "settings": reading.settings,
            "prior": self.prior,
            "timings": {**self.timings, "trace": report_drafts.TRACE_PENDING},
        }
        with session_scope() as session:
            # Cancelled while the model read: store nothing (the order may arrive at any time).
            order = matching_order(session, study)
            if not _order_allows(session, self.version_pk, order):
                raise _OrderCancelled(study.accession_number)
            row = report_drafts.record_draft(
                session,
                study_version_pk=self.version_pk,
                content=content,
                run=run,
                algorithm=algorithm,
                settings=self.settings,
                source_files={image.sop_instance_uid: image.path for image in self.images},
            )
            # What the API shows: the report's id and its version number (not row keys).
            assert row.draft_run_pk is not None  # record_draft always records its run
            self.stored = _Stored(row.report_pk, row.number, row.draft_run_pk)
        self.findings = len(content.findings)
        self.timings["build_s"] = round(time.monotonic() - built, 4)
        self.timings["stored_draft_s"] = round(time.monotonic() - self.started, 4)
        log.info("draft stored %s", kv(study=study.study_instance_uid, **self._ids()))

    def trace_done(self, reading: models.Reading) -> dict[str, Any]:
        """The reading is complete: every stage and both times go to the draft's run."""
        if self.stored is None:  # the reader always calls on_draft before it returns
            raise RuntimeError("the reading ended without calling on_draft")
        self.timings["trace_s"] = round(reading.total_seconds, 4)
        self.timings["model_s"] = self.timings["trace_s"]
        with session_scope() as session:
            self.timings["stored_trace_s"] = round(time.monotonic() - self.started, 4)
            report_drafts.record_trace(
                session,
                self.stored.draft_run_pk,
                stages=stage_rows(reading),
                timings=self.timings,
            )
        self.timings["trace"] = report_drafts.TRACE_COMPLETE
        self._log_drafted()
        return self.timings

    def trace_failed(self, error: Exception) -> dict[str, Any]:
        """The reading failed after the draft was stored: keep the draft, mark the trace."""
        assert self.stored is not None
        reason = f"{type(error).__name__}: {error}"
        stages = stage_rows(self.reading) if self.reading is not None else None
        with session_scope() as session:
            report_drafts.mark_trace_incomplete(
                session, self.stored.draft_run_pk, reason, stages=stages, timings=self.timings
            )
        self.timings["trace"] = report_drafts.TRACE_INCOMPLETE
        log.warning(
            "trace incomplete %s",
            kv(study=self.study.study_instance_uid, error=reason, **self._ids()),
        )
        self._log_drafted()
        return self.timings

    def _ids(self) -> dict[str, Any]:
        assert self.stored is not None
        return {
            "study_version_pk": self.version_pk,
            "report": self.stored.report_id,
            "report_version": self.stored.report_version,
        }

    def _log_drafted(self) -> None:
        log.info(
            "drafted %s",
            kv(
                study=self.study.study_instance_uid,
                **self._ids(),
                findings=self.findings,
                prior=self.prior.get("source"),
                **self.timings,
            ),
        )


def bounded_text(text: str, limit: int) -> tuple[str, dict[str, int] | None]:
    """``text`` cut to at most ``limit`` characters (at a word boundary when one is near) with
    " …" appended, and what was cut (``{"chars": original, "kept": kept}``); unchanged and
    None when it fits. A 200,000-character indication (DICOM) or a 1 MB OBR-13 (HL7) went to
    the model whole: the draft failed on the context length five times and was dead-lettered.
    """
    text = text.strip()
    if len(text) <= limit:
        return text, None
    kept = text[:limit]
    space = kept.rfind(" ", int(limit * 0.9))
    if space > 0:
        kept = kept[:space]
    kept = kept.rstrip()
    return kept + " …", {"chars": len(text), "kept": len(kept)}


#: What backends say when a conversation is longer than the model's context: transformers'
#: backend (models/_hf.py) and vLLM's OpenAI-compatible server.
_CONTEXT_WORDS = ("exceeds the context", "maximum context length", "context length")


def not_fitting(error: BaseException) -> bool:
    """True when ``error`` says the conversation cannot fit the model's context: a permanent
    failure. The openai backend's error carries the server's HTTP answer as its cause; a 400
    (vLLM's answer to a prompt over its context, and to any request it cannot take) does not
    change on a retry either."""
    text = str(error).lower()
    if any(words in text for words in _CONTEXT_WORDS):
        return True
    response = getattr(error.__cause__, "response", None)
    return getattr(response, "status_code", None) == 400


def matching_order(session: Any, study: dicom_listener.StudyInfo) -> orders.OrderInfo | None:
    """The RIS order for the study's accession, if it is for the same patient (PID-3 against
    the header's PatientID); an order for someone else is ignored and logged, never used."""
    order = orders.order_for_accession(session, study.accession_number)
    if order is None or not order.patient_id or order.patient_id == study.patient_id:
        return order
    log.warning(
        "order ignored: another patient %s",
        kv(accession=study.accession_number, order_patient=order.patient_id),
    )
    return None


def _order_allows(session: Any, version_pk: int, order: orders.OrderInfo | None) -> bool:
    """Apply the study's order to its report (priority); False when it was cancelled."""
    if order is None:
        return True
    return report_drafts.order_for_draft(
        session,
        version_pk,
        priority=order.priority,
        cancelled=order.cancelled,
        control=order.order_control,
    )


def apply_order_job(job_id: int, args: ApplyOrder) -> dict[str, Any]:
    """Apply a received order to its study's reports: STAT raises them, a cancel marks them."""
    with session_scope() as session:
        order = orders.order_for_message(session, args.order_message_pk)
        if order is None:
            return {"skipped": "no order for this message"}
        touched = report_drafts.apply_order(
            session,
            order.accession_number,
            priority=order.priority,
            cancelled=order.cancelled,
            control=order.order_control,
        )
    return {"reports": touched}


def draft_failed(args: DraftStudy, error: str) -> None:
    """A draft job is dead: show the study as failed so an administrator can requeue it."""
    with session_scope() as session:
        report_drafts.mark_state(session, args.study_version_pk, "failed", reason=error)


def _current_images(
    images: list[dicom_listener.ArchivedImage],
) -> list[dicom_listener.ArchivedImage]:
    """What the model reads: the first frontal view and, when present, one lateral view."""
    if not images:
        return []
    first = images[0]
    others = [image for image in images[1:] if image.sop_instance_uid != first.sop_instance_uid]
    lateral = [image for image in others if image.lateral]
    return [first, *lateral[:1]]


def report_content(reading: models.Reading, *, study_version_uid: str) -> ReportContent:
    """The draft's text and findings from a reading; one grounded finding per box.

    The model's text goes through :func:`report_drafts.safe_content`: control characters out,
    what was removed recorded in ``extra["sanitised"]``; the raw answers stay in the stage rows.
    """
    findings: list[Finding] = []
    for finding in reading.findings:
        if not finding.present:
            continue
        boxes: list[models.Box | None] = list(finding.boxes) or [None]
        for index, box in enumerate(boxes):
            findings.append(
                Finding(
                    # Derived, not random: a re-run of the same version gives the same UIDs.
                    tracking_uid=generate_uid(
                        entropy_srcs=[study_version_uid, finding.label, str(index)]
                    ),
                    label=finding.label,
                    sop_instance_uid=box.sop_instance_uid if box else None,
                    box=Box(box.x1, box.y1, box.x2, box.y2) if box else None,
                    laterality=finding.laterality,
                    site=finding.site,
                    certainty=finding.confidence,
                )
            )
    raw = ReportContent(
        findings_text=reading.findings_text,
        impression=reading.impression,
        progression=reading.progression_text,
        findings=tuple(findings),
        extra={
            "view": reading.view,
            "quality": reading.quality,
            "quality_warnings": [report_drafts.visible(w) for w in reading.quality_warnings],
            "unparsed": [report_drafts.visible(u) for u in reading.unparsed],
            "needs_review": needs_review(reading),
            # Answers cut by the token limit: shown on the review page as incomplete.
            "truncated": list(reading.truncated),
            "report_source": reading.report_source,
            "text_sources": dict(reading.text_sources),
            "staged_report": dict(reading.staged_report),
        },
    )
    return report_drafts.safe_content(raw)


def needs_review(reading: models.Reading) -> list[str]:
    """The labels a stage answer could not be read for: a presence answer that is neither yes
    nor no, or a per-finding answer (attributes, box, change) not understood. Each is shown on
    the draft, the page and the SR instead of vanishing from the findings."""
    labels = [f.label for f in reading.findings if f.present is None]
    for stage in reading.stages:
        for turn in stage.turns:
            if turn.target and (not turn.parsed or turn.boxed_missing):
                labels.append(turn.target)
    return list(dict.fromkeys(labels))


def _turn_row(stage: int | str, name: str, turn: models.Turn) -> dict[str, Any]:
    return {
        "stage": stage,
        "name": name,
        "kind": turn.kind,
        "question": turn.question,
        "answer": turn.answer,
        "reasoning": turn.reasoning,
        "seconds": round(turn.seconds, 3),
        "tokens": turn.completion_tokens,
        "parsed": turn.parsed,
        "truncated": turn.truncated,
        "conversation": turn.conversation,
        "mode": turn.mode,
    }


REPORT_STAGE = "report"  # the single-turn report prompts' group on the review page


def stage_rows(reading: models.Reading) -> list[dict[str, Any]]:
    """One row per question asked, in order, for the review page's stage list: the eight
    CXRTrek stages, then the single-turn report prompts (each row says its conversation)."""
    rows: list[dict[str, Any]] = []
    for stage in reading.stages:
        if stage.skipped:
            rows.append(
                {
                    "stage": stage.stage,
                    "name": stage.name,
                    "question": "",
                    "answer": "",
                    "reasoning": "",
                    "seconds": 0.0,
                    "skipped": stage.skip_reason,
                }
            )
        rows.extend(_turn_row(stage.stage, stage.name, turn) for turn in stage.turns)
    rows.extend(
        _turn_row(REPORT_STAGE, "report texts, single-turn as CheXOne was trained", turn)
        for turn in reading.report_turns
    )
    return rows

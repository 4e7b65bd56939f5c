"""An archive of N studies on PostgreSQL, the way RadDraft itself fills one (bench/scale.py and
the plan tests).

One day's finished work is made by RadDraft's own code: the listener's rows and files
(:func:`tests.pages.seed.archive_study`), drafts through :func:`report_drafts.record_draft` with
the eight stages, a prior for half the studies, first views, edits, signatures, rejections and
amendments through the sign-off functions (which build the SR/GSPS/HL7/FHIR objects and enqueue
the exports), each send recorded through :func:`report_drafts.delivery.record_sent` and each
job claimed and finished through :mod:`raddraft.jobs`. That day is then cloned server-side, in
one ``INSERT ... SELECT ... FROM generate_series`` per table and batch (a bulk load like COPY,
without the round trip through the client), into the days before it: ids shifted by the day's
id range, UIDs, keys, accession numbers and patient ids made unique per clone, times and study
dates moved back a day per 150 studies. Triggers are off for the load (the counters are
rebuilt after it, as migrations 0011 and 0013 build them), then the tables are analysed.
Today's open work (drafts waiting, a failed draft, an open study, a dead export) is added last
by :func:`tests.pages.seed.seed`.
"""

from __future__ import annotations

import datetime as dt
import importlib
import random
from dataclasses import dataclass

from sqlalchemy import Column, Integer, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

import migrations.schema
from dicom_listener.tables import Patient
from raddraft import job_contract, jobs
from raddraft.db import session_factory, utcnow
from raddraft.settings import Settings
from report_drafts import delivery, drafting, signoff
from report_drafts.content import Box, Finding, ReportContent
from report_drafts.states import ReportState
from report_drafts.tables import Report, SentObject, SentState, User
from report_drafts.users import add_user
from tests.dicom_factory import new_uid
from tests.pages import seed as page_seed

STUDIES_PER_DAY = 150
NOT_CLONED = frozenset(
    ("users", "worker_beats", "counters", "counter_deltas", "outbox_payloads", "retrieved_priors")
)
# Columns holding a DICOM UID: the clone's is the template's cut to 57 characters plus
# ".<100000 + clone>", the same function everywhere, so references between tables still meet.
UID_COLUMNS = frozenset(
    (
        ("studies", "study_instance_uid"),
        ("series", "series_instance_uid"),
        ("instances", "sop_instance_uid"),
        ("report_versions", "sr_sop_instance_uid"),
        ("report_versions", "predecessor_sr_uid"),
        ("audit_events", "study_instance_uid"),
        ("ingest_events", "study_instance_uid"),
        ("ingest_events", "sop_instance_uid"),
    )
)
# Unique or looked-up strings that are not UIDs: "-<clone>" appended.
SUFFIX_COLUMNS = frozenset(
    (
        ("reports", "uid"),
        ("jobs", "key"),
        ("patients", "patient_id"),
        ("studies", "accession_number"),
        ("orders", "accession_number"),
        ("sent_objects", "identifier"),
        ("critical_notifications", "identifier"),
    )
)
FINDINGS = (
    ("Pleural effusion", "left", Box(40.0, 330.0, 190.0, 470.0)),
    ("Cardiomegaly", None, Box(150.0, 250.0, 330.0, 420.0)),
    ("Consolidation", "right", Box(230.0, 300.0, 380.0, 430.0)),
    ("Support devices", None, Box(190.0, 60.0, 250.0, 240.0)),
)


@dataclass(frozen=True)
class Archive:
    studies: int
    template_studies: int
    clones: int


def _uid(expression: str, k: str) -> str:
    return (
        f"CASE WHEN {expression} IS NULL OR {expression} = '' THEN {expression} "
        f"ELSE left({expression}, 57) || '.' || (100000 + {k})::text END"
    )


def make_day(engine: Engine, settings: Settings, *, studies: int, seed: int = 7) -> None:
    """``studies`` finished studies of one day, by RadDraft's own code (see the module)."""
    rng = random.Random(seed)
    now = utcnow()
    session = session_factory(engine)()
    try:
        doctor, _ = add_user(session, "scale-radiologist", "radiologist", display_name="Lee^Ann")
        start = now - dt.timedelta(hours=23)
        patient: Patient | None = None
        previous_uid = ""
        for i in range(studies):
            with_prior = i % 2 == 1 and patient is not None
            if not with_prior:
                patient = Patient(
                    patient_id=f"SP{i:07d}", patient_name=f"SCALE^P{i}", birth_date="19600101"
                )
                session.add(patient)
                session.flush()
            assert patient is not None
            received = start + dt.timedelta(hours=22 * i / max(studies, 1))
            archived = page_seed.archive_study(
                session,
                settings,
                patient=patient,
                accession=f"SA{i:07d}",
                study_date=received.strftime("%Y%m%d"),
                priority=0 if i % 25 == 0 else 1 if i % 10 == 0 else 2,
                indication="Shortness of breath" if i % 3 else "Follow-up",
                views=("PA", "LATERAL") if i % 4 else ("PA",),
                received=received,
                seed=seed + i,
            )
            session.add(
                jobs.Job(
                    key=f"draft:version:{archived.version.id}",
                    task=job_contract.DraftStudy.TASK,
                    queue="gpu",
                    priority=archived.study.priority,
                )
            )
            session.commit()
            _draft_and_sign(session, settings, archived, doctor, rng, i, previous_uid, with_prior)
            previous_uid = archived.study.study_instance_uid
        _deliver(session, rng)
        session.commit()
    finally:
        session.close()


def _draft_and_sign(
    session: Session,
    settings: Settings,
    archived: page_seed.ArchivedStudy,
    doctor: User,
    rng: random.Random,
    i: int,
    prior_uid: str,
    with_prior: bool,
) -> None:
    pa = archived.instances[0].sop_instance_uid
    chosen = rng.sample(FINDINGS, rng.randint(0, 2))
    if i % 20 == 3:  # a suspected critical finding: the draft notifies (if a channel is set)
        chosen.append(("Pneumothorax", "right", Box(250.0, 40.0, 400.0, 170.0)))
    content = ReportContent(
        findings_text=" ".join(f"{label} noted." for label, _, _ in chosen) or "Lungs clear.",
        impression="; ".join(label for label, _, _ in chosen) or "No acute abnormality.",
        progression="Stable compared with the prior." if with_prior else "",
        findings=tuple(
            Finding(
                tracking_uid=str(new_uid()),
                label=label,
                sop_instance_uid=pa,
                box=box,
                laterality=side,
                certainty=0.8,
            )
            for label, side, box in chosen
        ),
    )
    run = {
        "stages": page_seed.stages([(label, "seen") for label, _, _ in chosen], prior=with_prior),
        "prior": {"study_instance_uid": prior_uid} if with_prior else {"none": "no prior"},
        "settings": {"max_new_tokens": 512},
        "timings": {"total_s": 25.0},
    }
    if i % 50 == 49:  # a draft that failed for good
        drafting.mark_state(session, archived.version.id, ReportState.drafting)
        drafting.mark_state(
            session, archived.version.id, ReportState.failed, reason="RuntimeError: seeded"
        )
        session.commit()
        return
    row = drafting.record_draft(
        session,
        study_version_pk=archived.version.id,
        content=content,
        run=run,
        algorithm=page_seed.CHEXONE,
        settings=settings,
    )
    session.commit()
    report_pk = row.report_pk
    signoff.open_report(session, report_pk, doctor)
    version = 1
    if content.findings and i % 3 == 0:  # the radiologist accepts the first finding
        signoff.finding_feedback(
            session,
            report_pk,
            doctor,
            expected_version=version,
            tracking_uid=content.findings[0].tracking_uid,
            action="accept",
        )
        version += 1
    if i % 5 == 0:
        signoff.edit_text(
            session,
            report_pk,
            doctor,
            expected_version=version,
            impression=content.impression + " Clinical correlation.",
        )
        version += 1
    if i % 25 == 24:
        signoff.reject(
            session,
            report_pk,
            doctor,
            expected_version=version,
            reason="wrong patient position",
            settings=settings,
        )
        session.commit()
        return
    signed = signoff.sign(
        session,
        report_pk,
        doctor,
        expected_version=version,
        edit_reason="content" if i % 5 == 0 else "none",
        settings=settings,
    )
    if i % 30 == 29:
        signoff.amend(
            session,
            report_pk,
            doctor,
            expected_version=signed.number,
            reason="laterality",
            impression="Amended: " + content.impression,
            settings=settings,
        )
    session.commit()


def _deliver(session: Session, rng: random.Random) -> None:
    """Every job run and every object sent, as the workers record it (a few after a retry)."""
    for sent in list(
        session.scalars(select(SentObject).where(SentObject.state == SentState.pending))
    ):
        if rng.random() < 0.02:
            delivery.record_sent(session, sent.id, ok=False, error="timeout")
        delivery.record_sent(session, sent.id, ok=True, response={"status": 0})
    session.commit()
    lease = dt.timedelta(minutes=5)
    for job_id in list(
        session.scalars(select(jobs.Job.id).where(jobs.Job.state == jobs.JobState.pending))
    ):
        jobs.claim(session, job_id, "seed-worker", lease)
        run_s = rng.uniform(15, 40) if job_id % 5 == 0 else rng.uniform(0.1, 3.0)
        jobs.finish(session, job_id, {"run_s": round(run_s, 3)})


def _clone_expression(table: str, column: Column[object], strides: dict[str, int]) -> str:
    name = f'"{column.name}"'
    key = (table, column.name)
    if key in UID_COLUMNS:
        return _uid(name, "g.k")
    if key in SUFFIX_COLUMNS:
        return f"CASE WHEN {name} = '' THEN {name} ELSE {name} || '-' || g.k::text END"
    if column.primary_key and isinstance(column.type, Integer):
        return f"{name} + g.k * {strides[table]}"
    for fk in column.foreign_keys:
        target = fk.column.table.name
        if target in strides:
            return f"{name} + g.k * {strides[target]}"
    kind = str(column.type).upper()
    if "DATETIME" in kind or "TIMESTAMP" in kind:
        return f"{name} - g.k * :span"
    if key == ("studies", "study_date"):
        return (
            "CASE WHEN study_date ~ '^[0-9]{8}$' THEN to_char(to_date(study_date, 'YYYYMMDD') "
            "- (g.k * CAST(:span_days AS float8))::int, 'YYYYMMDD') ELSE study_date END"
        )
    if key == ("draft_runs", "prior"):
        moved = _uid("(prior ->> 'study_instance_uid')", "g.k")
        return (
            "CASE WHEN prior::jsonb ? 'study_instance_uid' THEN jsonb_set(prior::jsonb, "
            f"'{{study_instance_uid}}', to_jsonb({moved}))::json ELSE prior END"
        )
    return name


def clone(
    conn: Connection,
    *,
    clones: int,
    template_studies: int,
    batch: int = 50,
    span_days: float | None = None,
) -> None:
    """Copy the template (every row now in the tables) ``clones`` times into the past, each
    clone ``span_days`` earlier than the one before (by default the template's share of a
    day of 150 studies)."""
    tables = [t for t in migrations.schema.metadata().sorted_tables if t.name not in NOT_CLONED]
    strides: dict[str, int] = {}
    for table in tables:
        top = conn.scalar(text(f"SELECT coalesce(max(id), 0) FROM {table.name}"))
        strides[table.name] = int(top or 0)
    if span_days is None:
        span_days = template_studies / STUDIES_PER_DAY
    conn.execute(text("SET session_replication_role = replica"))  # no triggers for the load
    for first in range(1, clones + 1, batch):
        last = min(first + batch - 1, clones)
        for table in tables:
            if not strides[table.name]:
                continue
            columns = list(table.columns)
            exprs = ", ".join(_clone_expression(table.name, c, strides) for c in columns)
            names = ", ".join(f'"{c.name}"' for c in columns)
            conn.execute(
                text(
                    f"INSERT INTO {table.name} ({names}) "
                    f"SELECT {exprs} FROM {table.name} "
                    "CROSS JOIN generate_series(CAST(:first AS int), CAST(:last AS int)) AS g(k) "
                    f"WHERE {table.name}.id <= :top"
                ),
                {
                    "first": first,
                    "last": last,
                    "top": strides[table.name],
                    "span": dt.timedelta(days=span_days),
                    "span_days": span_days,
                },
            )
    conn.execute(text("SET session_replication_role = origin"))
    for table in tables:
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                f"(SELECT coalesce(max(id), 1) FROM {table.name}))"
            )
        )
    # Every kept count, migration 0011's and 0013's (what FHIR shows; the clones copied the
    # reports' FHIR columns, the counts are recounted from them).
    rebuild = importlib.import_module("migrations.versions.0013_fhir_shown_on_report")
    rebuild.rebuild_counters(conn)


def build(
    engine: Engine,
    settings: Settings,
    *,
    studies: int,
    template: int = 30,
    span_days: float | None = None,
) -> tuple[Archive, page_seed.Seeded]:
    """An archive of about ``studies`` studies: a template (part of a day), its clones into the
    days before, today's open work (whose users and reports :class:`Seeded` names)."""
    template = min(template, studies)
    make_day(engine, settings, studies=template)
    clones = max(studies // template - 1, 0)
    with engine.begin() as conn:
        clone(conn, clones=clones, template_studies=template, span_days=span_days)
    seeded = page_seed.seed(settings, engine)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    archive = Archive(studies=template * (clones + 1), template_studies=template, clones=clones)
    return archive, seeded


def report_ids(engine: Engine, limit: int = 20) -> list[int]:
    """Some signed reports, for the per-report endpoints."""
    with session_factory(engine)() as session:
        return list(
            session.scalars(
                select(Report.id).where(Report.state == ReportState.signed).limit(limit)
            )
        )

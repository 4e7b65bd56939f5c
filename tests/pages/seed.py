"""Test data for the pages: users, archived studies and drafts stored the way the worker does.

Drafts go through :func:`report_drafts.record_draft` (the worker's public entry), with
realistic content: findings with boxes on the archived frontal image, the eight stages with
questions, answers and reasoning, a prior study. A full-stack fixture (a real worker drafting
with the tiny checkpoint) can replace :func:`seed` as long as it returns a :class:`Seeded` whose
reports hold the same kinds of drafts; the tests only read what :class:`Seeded` names.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dicom_listener.tables import (
    IngestEvent,
    IngestEventKind,
    Instance,
    Patient,
    Series,
    Study,
    StudyVersion,
    VersionState,
)
from raddraft import job_contract, jobs
from raddraft.db import session_factory, utcnow
from raddraft.settings import Settings
from report_drafts import drafting
from report_drafts.content import Algorithm, Box, Finding, ReportContent
from report_drafts.states import ReportState
from report_drafts.tables import Report, SentObject, SentState
from report_drafts.users import add_user
from tests.dicom_factory import make_cxr, new_uid

PASSWORD = "correct horse battery staple"
CHEXONE = Algorithm(name="StanfordAIMI/CheXOne", version="3f2a9c1", program_version="0.1.0")
DEMO = Algorithm(name="tiny-qwen2.5-vl", version="random", program_version="0.1.0", demo=True)


@dataclass
class SeededUser:
    name: str
    role: str
    token: str
    password: str = PASSWORD


@dataclass
class Seeded:
    """What the seeding made, by purpose."""

    users: dict[str, SeededUser] = field(default_factory=dict)
    urgent_report: int = 0  # STAT, real model name, a prior, a box per finding, export failed
    demo_report: int = 0  # drafted by the demo model
    routine_report: int = 0  # a plain routine draft
    failed_report: int = 0  # drafting failed
    dead_export_job: int = 0  # the dead-lettered SR/GSPS export of urgent_report
    pneumothorax_uid: str = ""  # tracking uid of the urgent report's first finding
    effusion_uid: str = ""


@dataclass
class ArchivedStudy:
    study: Study
    version: StudyVersion
    instances: list[Instance]


def archive_study(
    session: Session,
    settings: Settings,
    *,
    patient: Patient,
    accession: str,
    study_date: str,
    priority: int,
    indication: str,
    views: tuple[str, ...] = ("PA", "LATERAL"),
    received: dt.datetime,
    complete: bool = True,
    seed: int = 0,
) -> ArchivedStudy:
    """Write synthetic images into the archive and the rows the listener would have made."""
    study_uid, series_uid = str(new_uid()), str(new_uid())
    study = Study(
        study_instance_uid=study_uid,
        patient_pk=patient.id,
        accession_number=accession,
        study_date=study_date,
        study_time="101500",
        study_description="XR CHEST PA AND LATERAL",
        priority=priority,
        indication=indication,
        first_received_at=received,
        last_received_at=received,
    )
    session.add(study)
    session.flush()
    series = Series(
        series_instance_uid=series_uid,
        study_pk=study.id,
        modality="DX",
        series_number="1",
        body_part_examined="CHEST",
    )
    version = StudyVersion(
        study_pk=study.id,
        number=1,
        state=VersionState.complete if complete else VersionState.open,
        opened_at=received,
        last_instance_at=received,
        completed_at=received + dt.timedelta(seconds=30) if complete else None,
        completion_reason="cxr_rule" if complete else None,
        eligible=True if complete else None,
    )
    session.add_all([series, version])
    session.flush()
    instances = []
    for number, view in enumerate(views, start=1):
        sop_uid = str(new_uid())
        relative = Path(study_uid) / series_uid / f"{sop_uid}.dcm"
        target = settings.archive_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        rows, cols = (512, 448) if view != "LATERAL" else (512, 512)
        make_cxr(
            target,
            patient_id=patient.patient_id,
            patient_name=patient.patient_name,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            view=view,
            rows=rows,
            cols=cols,
            accession=accession,
            study_date=study_date,
            instance_number=number,
            seed=seed + number,
        )
        instance = Instance(
            sop_instance_uid=sop_uid,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            series_pk=series.id,
            version_pk=version.id,
            instance_number=str(number),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=str(relative),
            size_bytes=target.stat().st_size,
            view_position="LL" if view == "LATERAL" else view,
            rows=rows,
            columns=cols,
            photometric_interpretation="MONOCHROME2",
            calling_ae_title="MODALITY",
            received_at=received,
        )
        session.add(instance)
        session.add(
            IngestEvent(
                at=received,
                kind=IngestEventKind.stored,
                calling_ae_title="MODALITY",
                study_instance_uid=study_uid,
                sop_instance_uid=sop_uid,
                status=0,
                size_bytes=instance.size_bytes,
            )
        )
        instances.append(instance)
    session.flush()
    return ArchivedStudy(study, version, instances)


DEMO_CUT = "single-turn findings: cut at 32 tokens, incomplete"


def stages(findings: list[tuple[str, str]], prior: bool) -> list[dict[str, object]]:
    """The eight CXRTrek stages as the staged reading stores them (stage -> turns)."""
    present = [label for label, _ in findings]

    def turn(question: str, answer: str, reasoning: str = "", kind: str = "") -> dict[str, str]:
        return {"kind": kind, "question": question, "answer": answer, "reasoning": reasoning}

    return [
        {
            "stage": 1,
            "name": "view and quality",
            "mode": "instruction",
            "seconds": 1.8,
            "turns": [
                turn("What is the view of this chest X-ray?", "PA", kind="view"),
                turn(
                    "What is the image quality of this chest X-ray?",
                    "Adequate for interpretation",
                    kind="quality",
                ),
            ],
        },
        {
            "stage": 2,
            "name": "findings present",
            "mode": "instruction",
            "seconds": 6.4,
            "turns": [
                turn(f"Is there {label.lower()} in this chest X-ray?", "Yes", kind="presence")
                for label in present
            ]
            + [turn("Is there consolidation in this chest X-ray?", "No", kind="presence")],
        },
        {
            "stage": 3,
            "name": "attributes and grounding",
            "mode": "reasoning",
            "seconds": 9.1,
            "turns": [
                turn(
                    f"Describe the location, severity and appearance of the {label.lower()}.",
                    detail,
                    reasoning=f"The {label.lower()} is best seen on the frontal view; its margins "
                    "are traced and a box is given in image coordinates.",
                    kind="attributes",
                )
                for label, detail in findings
            ],
        },
        {
            "stage": 4,
            "name": "relations",
            "mode": "instruction",
            "seconds": 1.2,
            "turns": [
                turn(
                    "How do the findings on this chest X-ray relate to each other?",
                    "The effusion and the basal opacity are likely related; the pneumothorax is "
                    "separate.",
                    kind="relations",
                ),
            ],
        },
        {
            "stage": 5,
            "name": "comparison with prior",
            "mode": "instruction",
            "seconds": 2.0,
            "skipped": not prior,
            "skip_reason": "" if prior else "no prior study",
            "turns": [
                turn(
                    "What are the key differences between the current chest X-ray and the "
                    "earlier ones?",
                    "New right apical pneumothorax; effusion slightly larger.",
                    kind="progression",
                ),
            ]
            if prior
            else [],
        },
        {
            "stage": 6,
            "name": "trend",
            "mode": "instruction",
            "seconds": 0.9,
            "turns": [
                turn(
                    "Based on the chest X-ray analysis, what is the expected course of the "
                    "findings?",
                    "Worsening without intervention.",
                    kind="trend",
                ),
            ],
        },
        {
            "stage": 7,
            "name": "advice",
            "mode": "instruction",
            "seconds": 1.1,
            "turns": [
                turn(
                    "Offer recommendations based on the chest X-ray analysis.",
                    "Urgent clinical review of the pneumothorax; follow-up radiograph.",
                    kind="advice",
                ),
            ],
        },
        {
            "stage": 8,
            "name": "findings and impression",
            "mode": "instruction",
            "seconds": 4.7,
            "turns": [
                turn(
                    "Write an example findings section for the CXR.",
                    "(see report)",
                    kind="findings",
                ),
                turn(
                    "Write an example impression section for the CXR",
                    "(see report)",
                    kind="impression",
                ),
            ],
        },
    ]


def seed(settings: Settings, engine: Engine) -> Seeded:
    """Users, four studies (one with a prior), three drafts, a failed draft, a dead export."""
    out = Seeded()
    now = utcnow()
    session = session_factory(engine)()
    try:
        for name, role, display in (
            ("curie", "radiologist", "Curie^Marie"),
            ("reader", "reader", "Reader^Rita"),
            ("admin", "admin", "Admin^Alan"),
        ):
            _user, token = add_user(session, name, role, display_name=display, password=PASSWORD)
            out.users[role] = SeededUser(name=name, role=role, token=token)

        patient = Patient(
            patient_id="RD0042", patient_name="DOE^JANE", birth_date="19580312", sex="F"
        )
        other = Patient(
            patient_id="RD0077", patient_name="ROE^RICHARD", birth_date="19710704", sex="M"
        )
        session.add_all([patient, other])
        session.flush()

        prior = archive_study(
            session,
            settings,
            patient=patient,
            accession="ACC-PRIOR",
            study_date="20240105",
            priority=2,
            indication="Cough",
            views=("PA",),
            received=now - dt.timedelta(days=200),
            seed=10,
        )
        urgent = archive_study(
            session,
            settings,
            patient=patient,
            accession="ACC-1001",
            study_date=now.strftime("%Y%m%d"),
            priority=0,
            indication="Sudden shortness of breath after central line placement",
            received=now - dt.timedelta(minutes=42),
            seed=20,
        )
        routine = archive_study(
            session,
            settings,
            patient=other,
            accession="ACC-1002",
            study_date=now.strftime("%Y%m%d"),
            priority=2,
            indication="Pre-operative",
            received=now - dt.timedelta(hours=3),
            seed=30,
        )
        demo = archive_study(
            session,
            settings,
            patient=other,
            accession="ACC-1003",
            study_date=now.strftime("%Y%m%d"),
            priority=2,
            indication="Fever",
            received=now - dt.timedelta(hours=2),
            seed=40,
        )
        failed = archive_study(
            session,
            settings,
            patient=other,
            accession="ACC-1004",
            study_date=now.strftime("%Y%m%d"),
            priority=1,
            indication="Chest pain",
            received=now - dt.timedelta(minutes=20),
            seed=50,
        )
        archive_study(
            session,
            settings,
            patient=other,
            accession="ACC-1005",
            study_date=now.strftime("%Y%m%d"),
            priority=2,
            indication="Follow-up",
            views=("PA",),
            received=now - dt.timedelta(minutes=3),
            complete=False,
            seed=60,
        )
        session.commit()

        pa = urgent.instances[0].sop_instance_uid
        urgent_findings = (
            Finding(
                tracking_uid=str(new_uid()),
                label="Pneumothorax",
                sop_instance_uid=pa,
                box=Box(250.0, 40.0, 400.0, 170.0),
                laterality="right",
                site="apex of lung",
                certainty=0.91,
            ),
            Finding(
                tracking_uid=str(new_uid()),
                label="Pleural effusion",
                sop_instance_uid=pa,
                box=Box(40.0, 330.0, 190.0, 470.0),
                laterality="left",
                site="costophrenic angle",
                certainty=0.84,
            ),
            Finding(
                tracking_uid=str(new_uid()),
                label="Support devices",
                sop_instance_uid=pa,
                box=Box(190.0, 60.0, 250.0, 240.0),
                certainty=0.77,
            ),
        )
        out.pneumothorax_uid = urgent_findings[0].tracking_uid
        out.effusion_uid = urgent_findings[1].tracking_uid
        urgent_content = ReportContent(
            findings_text=(
                "Right central venous catheter with tip in the lower SVC. New right apical "
                "pneumothorax measuring about 2 cm. Small left pleural effusion with basal "
                "opacity. Heart size normal. No consolidation."
            ),
            impression="1. New right apical pneumothorax.\n2. Small left pleural effusion.",
            progression="Compared with 2024-01-05: the pneumothorax is new; the effusion has "
            "slightly increased.",
            findings=urgent_findings,
        )
        row = drafting.record_draft(
            session,
            study_version_pk=urgent.version.id,
            content=urgent_content,
            run={
                "stages": stages(
                    [
                        ("Pneumothorax", "Right apical, about 2 cm rim, no mediastinal shift."),
                        ("Pleural effusion", "Small, left, blunting the costophrenic angle."),
                        ("Support devices", "Right internal jugular line, tip in the SVC."),
                    ],
                    prior=True,
                ),
                "prior": {"study_instance_uid": prior.study.study_instance_uid},
                "settings": {"max_new_tokens": 512},
                "timings": {"total_s": 27.2},
            },
            algorithm=CHEXONE,
            settings=settings,
        )
        out.urgent_report = row.report_pk
        session.commit()

        routine_row = drafting.record_draft(
            session,
            study_version_pk=routine.version.id,
            content=ReportContent(
                findings_text="Lungs are clear. Heart and mediastinum normal. No effusion.",
                impression="No acute cardiopulmonary abnormality.",
                findings=(),
            ),
            run={"stages": stages([], prior=False), "prior": {"none": "no earlier study"}},
            algorithm=CHEXONE,
            settings=settings,
        )
        out.routine_report = routine_row.report_pk
        demo_pa = demo.instances[0].sop_instance_uid
        demo_row = drafting.record_draft(
            session,
            study_version_pk=demo.version.id,
            content=ReportContent(
                findings_text="Patchy opacity in the right lower zone.",
                impression="Possible right lower lobe pneumonia.",
                findings=(
                    Finding(
                        tracking_uid=str(new_uid()),
                        label="Consolidation",
                        sop_instance_uid=demo_pa,
                        box=Box(230.0, 300.0, 380.0, 430.0),
                        laterality="right",
                        certainty=0.5,
                    ),
                ),
                # A random-weight model writes until the token limit: its answers are cut.
                extra={"truncated": [DEMO_CUT]},
            ),
            run={
                "stages": [
                    *stages([("Consolidation", "Right lower zone.")], prior=False),
                    {
                        "stage": "report",
                        "name": "report texts, single-turn as CheXOne was trained",
                        "kind": "findings",
                        "question": "Write an example findings section for the CXR.",
                        "answer": "Patchy opacity in the right lower zone.",
                        "truncated": True,
                        "conversation": "single-turn",
                    },
                ],
                "prior": {"none": "no earlier study"},
            },
            algorithm=DEMO,
            settings=settings,
        )
        out.demo_report = demo_row.report_pk
        drafting.mark_state(session, failed.version.id, ReportState.drafting)
        drafting.mark_state(
            session,
            failed.version.id,
            ReportState.failed,
            reason="RuntimeError: CUDA out of memory while drafting",
        )
        out.failed_report = session.scalars(
            select(Report.id).where(Report.study_version_pk == failed.version.id)
        ).one()
        session.commit()

        # The urgent draft's export to PACS failed for good: a dead letter.
        export = session.scalar(
            select(jobs.Job).where(
                jobs.Job.task == job_contract.ExportDicom.TASK,
                jobs.Job.key.like(f"export:{row.id}:%"),
            )
        )
        if export is None:
            raise AssertionError("record_draft made no export job; are destinations set?")
        export.state = jobs.JobState.dead
        export.attempts = export.max_attempts
        export.last_error = "TransientExportError: association rejected by PACS@127.0.0.1:1"
        export.finished_at = now - dt.timedelta(minutes=5)
        for sent in session.scalars(
            select(SentObject).where(SentObject.report_version_pk == row.id)
        ):
            sent.state = SentState.failed
            sent.attempts = export.max_attempts
            sent.last_error = "association rejected"
        out.dead_export_job = export.id

        # A drafting job that finished, with the runner's timings, for the latency figures.
        session.add(
            jobs.Job(
                key=f"draft:version:{urgent.version.id}",
                task=job_contract.DraftStudy.TASK,
                queue="gpu",
                priority=0,
                state=jobs.JobState.done,
                attempts=1,
                created_at=now - dt.timedelta(minutes=41),
                started_at=now - dt.timedelta(minutes=40),
                finished_at=now - dt.timedelta(minutes=39),
                timings={"queued_s": 62.0, "run_s": 27.2, "model_s": 26.1},
            )
        )
        jobs.beat(session, "gpu-worker@node1", queues="gpu", model=CHEXONE.name, pid=4242)
        jobs.beat(session, "io-worker@node1", queues="io", model="", pid=4243)
        session.commit()
    finally:
        session.close()
    return out

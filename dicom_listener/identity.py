"""Patient identity: one patient per Patient ID *and* Issuer of Patient ID (PS3.3 C.7.1.1,
(0010,0020) and (0010,0021)), and a conflict when a study's header disagrees with it.

Two hospitals may give the same Patient ID to two people; one hospital may send a study whose
name, birth date or sex differ from what it sent before under that ID (a wrong worklist pick, a
merge not yet done). RadDraft never overwrites the patient it holds, and never shows or sends a
study under a name its own header does not carry without saying so: it records an
:class:`IdentityConflict` for the study, which the worklist and the review page flag with the
header's demographics, and which keeps the study's report from the RIS until an administrator
resolves it.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_listener.header import InstanceHeader
from dicom_listener.tables import IdentityConflict, Patient, Study
from raddraft.db import utcnow


def _name(value: str) -> str:
    """A PN compared without case, padding or empty trailing components (PS3.5 6.2.1)."""
    groups = value.strip().upper().split("=")
    return "=".join("^".join(p.strip() for p in g.split("^")).rstrip("^") for g in groups).strip(
        "="
    )


def disagreements(patient: Patient, header: InstanceHeader) -> list[str]:
    """Which of name, birth date and sex the header gives otherwise than the patient row.

    An empty value on either side is no disagreement: the attributes are Type 2 (PS3.3
    C.7.1.1), and a sender that leaves one empty says nothing about it.
    """
    found = []
    pairs = (
        ("name", _name(patient.patient_name), _name(header.patient_name)),
        ("birth date", patient.birth_date.strip(), header.birth_date.strip()),
        ("sex", patient.sex.strip().upper(), header.sex.strip().upper()),
    )
    for what, held, received in pairs:
        if held and received and held != received:
            found.append(what)
    return found


def check_identity(
    session: Session, patient: Patient, study: Study, header: InstanceHeader
) -> IdentityConflict | None:
    """Record the study's identity conflict (once per study) when ``header`` disagrees with
    ``patient``; the conflict, new or already recorded, or None when they agree."""
    existing = session.scalar(select(IdentityConflict).where(IdentityConflict.study_pk == study.id))
    if not disagreements(patient, header):
        return existing
    if existing is not None:
        return existing
    conflict = IdentityConflict(
        study_pk=study.id,
        patient_pk=patient.id,
        sop_instance_uid=header.sop_instance_uid,
        received_name=header.patient_name,
        received_birth_date=header.birth_date,
        received_sex=header.sex,
        held_name=patient.patient_name,
        held_birth_date=patient.birth_date,
        held_sex=patient.sex,
    )
    try:
        with session.begin_nested():
            session.add(conflict)
            session.flush()
    except IntegrityError:
        # Another association recorded it first.
        return session.scalar(select(IdentityConflict).where(IdentityConflict.study_pk == study.id))
    return conflict


def identity_conflict(session: Session, study_pk: int) -> IdentityConflict | None:
    """The study's identity conflict, resolved or not, if it has one."""
    return session.scalar(select(IdentityConflict).where(IdentityConflict.study_pk == study_pk))


def open_identity_conflicts(session: Session, limit: int = 100) -> list[IdentityConflict]:
    """Unresolved conflicts, oldest first (bounded)."""
    return list(
        session.scalars(
            select(IdentityConflict)
            .where(IdentityConflict.resolved_at.is_(None))
            .order_by(IdentityConflict.detected_at, IdentityConflict.id)
            .limit(limit)
        )
    )


def resolve_identity_conflict(
    session: Session, conflict_id: int, *, by: str, resolution: str
) -> IdentityConflict:
    """Mark the conflict resolved by an administrator (``by``), with what they decided.

    Raises LookupError for an unknown conflict, ValueError for one already resolved or an
    empty resolution.
    """
    conflict = session.get(IdentityConflict, conflict_id, with_for_update=True)
    if conflict is None:
        raise LookupError(f"no identity conflict {conflict_id}")
    if conflict.resolved_at is not None:
        raise ValueError(f"identity conflict {conflict_id} was resolved by {conflict.resolved_by}")
    if not resolution.strip():
        raise ValueError("say how the conflict was resolved")
    conflict.resolved_at = utcnow()
    conflict.resolved_by = by[:64]
    conflict.resolution = resolution.strip()[:4000]
    session.flush()
    return conflict

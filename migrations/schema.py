"""Every RadDraft table, imported in one place so Alembic and the tests see the whole schema.

Each folder declares its own tables on :class:`raddraft.db.Base`; a folder that adds a table
module adds its import here. Only migrations (and tests) look at the whole schema at once.

The indexes that serve reads across folders (the worklist's keyset page, the queue page's
bounded lists and windows, ``raddraft studies``) are declared here, where every table is in
view, as migration 0011 creates them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Index, MetaData, Table, func, text

import dicom_listener.tables
import orders.tables
import raddraft.counters
import raddraft.jobs
import report_drafts.tables
import worker.tables
from raddraft.db import Base

TABLE_MODULES = (
    raddraft.jobs,
    raddraft.counters,
    dicom_listener.tables,
    orders.tables,
    report_drafts.tables,
    worker.tables,
)

# (name, table, columns, partial-index condition or None): as migration 0011 creates them.
SCALE_INDEXES: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (
    ("ix_reports_worklist", "reports", ("priority", "created_at", "id"), "state <> 'superseded'"),
    ("ix_reports_state_updated", "reports", ("state", "updated_at"), None),
    ("ix_report_versions_action_created", "report_versions", ("action", "created_at"), None),
    ("ix_ingest_events_kind_at", "ingest_events", ("kind", "at"), None),
    ("ix_jobs_state_finished", "jobs", ("state", "finished_at", "id"), None),
    ("ix_draft_runs_created_at", "draft_runs", ("created_at",), None),
    ("ix_draft_runs_demo", "draft_runs", ("study_version_pk",), "demo"),
    ("ix_sent_objects_state_id", "sent_objects", ("state", "id"), None),
    ("ix_audit_events_action_at", "audit_events", ("action", "at"), None),
    ("ix_audit_events_report_version", "audit_events", ("report_pk", "version"), None),
    ("ix_finding_feedback_at", "finding_feedback", ("at",), None),
    ("ix_studies_last_received", "studies", ("last_received_at", "id"), None),
)


def _declare_indexes() -> None:
    tables: dict[str, Table] = dict(Base.metadata.tables)
    for name, table_name, columns, where in SCALE_INDEXES:
        table = tables[table_name]
        if any(index.name == name for index in table.indexes):
            continue
        condition: dict[str, Any] = {}
        if where is not None:
            condition = {"postgresql_where": text(where), "sqlite_where": text(where)}
        Index(name, *(table.c[c] for c in columns), **condition)


_declare_indexes()
# Retention's rule 6: drafts by the prior they read (an expression index, as 0011 makes it).
_runs = Base.metadata.tables["draft_runs"]
if not any(index.name == "ix_draft_runs_prior_uid" for index in _runs.indexes):
    Index("ix_draft_runs_prior_uid", _runs.c.prior["study_instance_uid"].as_string())


# QIDO-RS PatientName matching, case-folded (0014; text_pattern_ops on PostgreSQL).
_patients = Base.metadata.tables["patients"]
if not any(index.name == "ix_patients_name_folded" for index in _patients.indexes):
    Index(
        "ix_patients_name_folded",
        func.lower(_patients.c.patient_name).label("folded"),
        postgresql_ops={"folded": "text_pattern_ops"},
    )


def metadata() -> MetaData:
    """The metadata of all of RadDraft's tables."""
    return Base.metadata

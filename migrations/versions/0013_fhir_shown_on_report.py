"""what FHIR shows of a report, on the report's row (indexed), and its counts

``reports.fhir_status`` (the DiagnosticReport.status shown, NULL while nothing is) and
``reports.fhir_updated_at`` (when the version shown was written), kept from now on by
``report_drafts.fhir_view`` where versions are written; filled here from the versions written
before. A FHIR search then matches, counts and pages on the report rows and their indexes
instead of asking every report's versions (a second at 100,000 studies). The counts
``fhir_reports`` (status) and ``fhir_studies`` () answer the totals of the searches a RIS runs
without narrowing.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 09:00:00.000000
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

import raddraft.db

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As report_drafts.fhir_view has them at this revision (a migration keeps its own copy).
PUBLISHED = "('draft', 'sign', 'amend', 'correct')"
WITHDRAWN = "('reject', 'supersede', 'order_cancelled')"
SHOWN = "('draft', 'sign', 'amend', 'correct', 'reject', 'supersede', 'order_cancelled')"
WITHDRAWN_STATUS = "entered-in-error"
COUNTED = ("fhir_reports", "fhir_studies")


def _versions(actions: str) -> str:
    return f"FROM report_versions v WHERE v.report_pk = reports.id AND v.action IN {actions}"


# Entered-in-error once withdrawn, else the latest published version's status; written when
# the last published or withdrawing version was.
BACKFILL = f"""
UPDATE reports SET
  fhir_status = CASE
    WHEN EXISTS (SELECT 1 {_versions(WITHDRAWN)}) THEN '{WITHDRAWN_STATUS}'
    ELSE (SELECT v.status {_versions(PUBLISHED)} ORDER BY v.number DESC LIMIT 1)
  END,
  fhir_updated_at = (SELECT v.created_at {_versions(SHOWN)} ORDER BY v.number DESC LIMIT 1)
WHERE EXISTS (SELECT 1 {_versions(SHOWN)})
"""

COUNTS = (
    "SELECT 'fhir_reports', fhir_status, count(*) FROM reports "
    "WHERE fhir_status IS NOT NULL GROUP BY fhir_status",
    "SELECT 'fhir_studies', '', count(DISTINCT study_pk) FROM reports "
    "WHERE fhir_status IS NOT NULL",
)


def rebuild_fhir_counters(bind: Connection) -> None:
    """Count what FHIR shows from the report rows again (this migration, a bulk load)."""
    names = ", ".join(f"'{name}'" for name in COUNTED)
    bind.execute(sa.text(f"DELETE FROM counter_deltas WHERE name IN ({names})"))
    bind.execute(sa.text(f"DELETE FROM counters WHERE name IN ({names})"))
    values = [
        {"n": name, "l": str(labels), "v": float(value)}
        for sql in COUNTS
        for name, labels, value in bind.execute(sa.text(sql))
        if value
    ]
    if values:
        bind.execute(
            sa.text("INSERT INTO counters (name, labels, value) VALUES (:n, :l, :v)"), values
        )


def rebuild_counters(bind: Connection) -> None:
    """Every kept count from the rows again: migration 0011's and this one's (a bulk load that
    went around the triggers and the writers)."""
    importlib.import_module("migrations.versions.0011_counters_and_indexes").rebuild_counters(bind)
    rebuild_fhir_counters(bind)


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy): reports keeps its counting triggers (0011).
    op.add_column("reports", sa.Column("fhir_status", sa.String(length=16), nullable=True))
    op.add_column(
        "reports",
        sa.Column("fhir_updated_at", raddraft.db.UTCDateTime(timezone=True), nullable=True),
    )
    bind = op.get_bind()
    bind.execute(sa.text(BACKFILL))
    op.create_index(
        "ix_reports_fhir_status",
        "reports",
        ["fhir_status", "id"],
        unique=False,
        postgresql_where=sa.text("fhir_status IS NOT NULL"),
        sqlite_where=sa.text("fhir_status IS NOT NULL"),
    )
    op.create_index("ix_reports_fhir_updated", "reports", ["fhir_updated_at"], unique=False)
    rebuild_fhir_counters(bind)
    if bind.dialect.name == "postgresql":
        # The planner's figures for the new columns now, not at autovacuum's next visit.
        op.execute("ANALYZE reports")


def downgrade() -> None:
    bind = op.get_bind()
    names = ", ".join(f"'{name}'" for name in COUNTED)
    bind.execute(sa.text(f"DELETE FROM counter_deltas WHERE name IN ({names})"))
    bind.execute(sa.text(f"DELETE FROM counters WHERE name IN ({names})"))
    op.drop_index("ix_reports_fhir_updated", table_name="reports")
    op.drop_index("ix_reports_fhir_status", table_name="reports")
    op.drop_column("reports", "fhir_updated_at")
    op.drop_column("reports", "fhir_status")

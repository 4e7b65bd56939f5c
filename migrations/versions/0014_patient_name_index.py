"""an index for QIDO-RS PatientName matching (case-folded; prefix wildcards on PostgreSQL)

QIDO-RS matches PatientName case-insensitively (``lower(patient_name) = ...`` or ``LIKE
'smi%'``, :mod:`web.dicomweb.matching`), which no index served: every such search read every
patient (15 ms at 100,000 studies, three times its time at 1,000). On PostgreSQL the index
uses ``text_pattern_ops`` so a prefix wildcard is a range scan whatever the collation; SQLite
uses it for the exact match. An expression index, so declared by ``migrations/schema.py``,
not compared by Alembic.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_patients_name_folded"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE INDEX {INDEX} ON patients (lower(patient_name) text_pattern_ops)")
    else:
        op.execute(f"CREATE INDEX {INDEX} ON patients (lower(patient_name))")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")

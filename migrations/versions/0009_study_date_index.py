"""an index on the study date (QIDO-RS and FHIR date searches are ranges on it)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 21:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_studies_study_date"), "studies", ["study_date"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_studies_study_date"), table_name="studies")

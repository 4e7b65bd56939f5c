"""an index for the queue page's "Studies not drafted" list (the newest refused versions)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 22:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_study_versions_eligible_completed",
        "study_versions",
        ["eligible", "completed_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_study_versions_eligible_completed", table_name="study_versions")

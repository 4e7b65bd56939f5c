"""ordered delivery: sent objects record what replaced them and what the peer answered

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sent_objects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replaced_by_version", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("response", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("sent_objects", schema=None) as batch_op:
        batch_op.drop_column("response")
        batch_op.drop_column("replaced_by_version")

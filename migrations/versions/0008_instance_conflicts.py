"""instance conflicts: a SOP Instance UID received again with other content (issue 20, item 11)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 21:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import raddraft.db

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instance_conflicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", raddraft.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("differences", sa.JSON(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_conflicts")),
    )
    with op.batch_alter_table("instance_conflicts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instance_conflicts_at"), ["at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_instance_conflicts_sop_instance_uid"),
            ["sop_instance_uid"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("instance_conflicts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_conflicts_sop_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_instance_conflicts_at"))
    op.drop_table("instance_conflicts")

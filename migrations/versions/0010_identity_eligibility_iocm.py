"""clinical: identity conflicts, image eligibility facts, the IOCM rejection note of a version,
who acknowledged a critical notice and its escalation

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 21:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import raddraft.db

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "identity_conflicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("received_name", sa.String(length=324), nullable=False),
        sa.Column("received_birth_date", sa.String(length=8), nullable=False),
        sa.Column("received_sex", sa.String(length=16), nullable=False),
        sa.Column("held_name", sa.String(length=324), nullable=False),
        sa.Column("held_birth_date", sa.String(length=8), nullable=False),
        sa.Column("held_sex", sa.String(length=16), nullable=False),
        sa.Column("detected_at", raddraft.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", raddraft.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=64), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_pk"], ["patients.id"], name=op.f("fk_identity_conflicts_patient_pk_patients")
        ),
        sa.ForeignKeyConstraint(
            ["study_pk"], ["studies.id"], name=op.f("fk_identity_conflicts_study_pk_studies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_conflicts")),
        sa.UniqueConstraint("study_pk", name=op.f("uq_identity_conflicts_study_pk")),
    )
    op.create_index(
        op.f("ix_identity_conflicts_patient_pk"), "identity_conflicts", ["patient_pk"], unique=False
    )
    # Plain ADD COLUMN (no batch copy): report_versions keeps its immutability triggers (0002).
    op.add_column(
        "instances",
        sa.Column("image_type", sa.String(length=64), nullable=False, server_default=""),
    )
    op.add_column(
        "instances",
        sa.Column("presentation_intent", sa.String(length=16), nullable=False, server_default=""),
    )
    op.add_column(
        "report_versions", sa.Column("rejection_note_uid", sa.String(length=64), nullable=True)
    )
    with op.batch_alter_table("critical_notifications", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("acknowledged_at", raddraft.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("acknowledged_by", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("escalation_level", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("escalated_at", raddraft.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("escalation_of", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_critical_notifications_escalation_of_critical_notifications"),
            "critical_notifications",
            ["escalation_of"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("critical_notifications", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_critical_notifications_escalation_of_critical_notifications"),
            type_="foreignkey",
        )
        batch_op.drop_column("escalation_of")
        batch_op.drop_column("escalated_at")
        batch_op.drop_column("escalation_level")
        batch_op.drop_column("acknowledged_by")
        batch_op.drop_column("acknowledged_at")
    op.drop_column("report_versions", "rejection_note_uid")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("presentation_intent")
        batch_op.drop_column("image_type")
    op.drop_index(op.f("ix_identity_conflicts_patient_pk"), table_name="identity_conflicts")
    op.drop_table("identity_conflicts")

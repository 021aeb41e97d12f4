"""reader feedback: per-finding verdicts; the patient's sex and age for the worklist

Revision ID: 0007_reader_feedback
Revises: 0005_review_idempotency

``finding_feedback`` holds a reader's verdict on one of the model's boxes (right, wrong) or a
box the reader drew where the model missed a fracture. ``studies`` gains Patient's Sex and
Patient's Age, read at ingest like the other identifiers (older rows stay empty).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_reader_feedback"
down_revision = "0005_review_idempotency"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_sex", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("patient_age", sa.String(length=4), nullable=True))
    op.create_table(
        "finding_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("image_prediction_id", sa.Integer(), nullable=True),
        sa.Column("region_index", sa.Integer(), nullable=True),
        sa.Column("x0", sa.Float(), nullable=False),
        sa.Column("y0", sa.Float(), nullable=False),
        sa.Column("x1", sa.Float(), nullable=False),
        sa.Column("y1", sa.Float(), nullable=False),
        sa.Column("ai_probability", sa.Float(), nullable=True),
        sa.Column("operating_points", sa.String(length=64), nullable=True),
        sa.Column("model_name", sa.String(length=64), nullable=True),
        sa.Column("model_version", sa.String(length=32), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_finding_feedback_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_finding_feedback_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_id"], ["users.id"], name=op.f("fk_finding_feedback_reviewer_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["image_prediction_id"],
            ["image_predictions.id"],
            name=op.f("fk_finding_feedback_image_prediction_id_image_predictions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finding_feedback")),
    )
    with op.batch_alter_table("finding_feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_finding_feedback_study_id"), ["study_id"])
        batch_op.create_index(batch_op.f("ix_finding_feedback_instance_id"), ["instance_id"])
        batch_op.create_index(batch_op.f("ix_finding_feedback_reviewer_id"), ["reviewer_id"])
        batch_op.create_index(
            "ix_finding_feedback_instance_created", ["instance_id", "created_at"]
        )


def downgrade() -> None:
    op.drop_table("finding_feedback")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("patient_age")
        batch_op.drop_column("patient_sex")

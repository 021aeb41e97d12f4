"""results: result objects (SR, SC) and the outbox of their deliveries

Revision ID: 0002_results
Revises: 0001_ingest
Create Date: 2026-11-23 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_results"
down_revision = "0001_ingest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("source_instance_id", sa.Integer(), nullable=True),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("storage_path", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_result_objects_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_result_objects_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_instance_id"],
            ["instances.id"],
            name=op.f("fk_result_objects_source_instance_id_instances"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_objects")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_result_objects_sop_instance_uid")),
    )
    with op.batch_alter_table("result_objects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_result_objects_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_result_objects_study_id"), ["study_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_result_objects_source_instance_id"), ["source_instance_id"], unique=False
        )

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_object_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_object_id"],
            ["result_objects.id"],
            name=op.f("fk_outbox_result_object_id_result_objects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint(
            "result_object_id", "destination", name="uq_outbox_result_object_destination"
        ),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_state_next", ["state", "next_attempt_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_outbox_result_object_id"), ["result_object_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_result_object_id"))
        batch_op.drop_index("ix_outbox_state_next")
    op.drop_table("outbox")
    with op.batch_alter_table("result_objects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_result_objects_source_instance_id"))
        batch_op.drop_index(batch_op.f("ix_result_objects_study_id"))
        batch_op.drop_index(batch_op.f("ix_result_objects_job_id"))
    op.drop_table("result_objects")

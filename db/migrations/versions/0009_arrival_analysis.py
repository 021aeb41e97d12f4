"""arrival analysis: image jobs, cached image results, the study's announced instance count

Revision ID: 0009_arrival_analysis
Revises: 0007_fenced_queue

``jobs.instance_id`` names the instance of an ``analyse_image`` job (None for a study's job).
The one-job-per-study-generation rule becomes a partial unique index over the study jobs only:
an instance may be analysed again (a replaced copy) within one generation.
``image_predictions.instance_sha256`` is the content the result was computed from, so a study
job reuses it only for the same bytes. ``studies.expected_instances`` is Number of Study
Related Instances (0020,1208) when a sender gives it: the study completes once that many are
stored (``dicom_node.grouping``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_arrival_analysis"
down_revision = "0007_fenced_queue"
branch_labels = None
depends_on = None

_STUDY_JOBS = sa.text("instance_id IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("instance_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_jobs_instance_id_instances", "instances", ["instance_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_index("ix_jobs_instance_id", ["instance_id"])
        batch.drop_constraint("uq_jobs_study_generation_kind", type_="unique")
    op.create_index(
        "uq_jobs_study_generation_kind",
        "jobs",
        ["study_id", "generation", "kind"],
        unique=True,
        sqlite_where=_STUDY_JOBS,
        postgresql_where=_STUDY_JOBS,
    )
    with op.batch_alter_table("image_predictions") as batch:
        batch.add_column(sa.Column("instance_sha256", sa.String(64), nullable=True))
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("expected_instances", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("expected_instances")
    with op.batch_alter_table("image_predictions") as batch:
        batch.drop_column("instance_sha256")
    op.execute(sa.text("DELETE FROM jobs WHERE instance_id IS NOT NULL"))
    op.drop_index("uq_jobs_study_generation_kind", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.create_unique_constraint(
            "uq_jobs_study_generation_kind", ["study_id", "generation", "kind"]
        )
        batch.drop_index("ix_jobs_instance_id")
        batch.drop_constraint("fk_jobs_instance_id_instances", type_="foreignkey")
        batch.drop_column("instance_id")

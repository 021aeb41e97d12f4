"""fenced queue: lease tokens and retry times of jobs and deliveries; image sizes of instances

Revision ID: 0007_fenced_queue
Revises: 0002_results

``lease_token`` is the fencing token of :mod:`db.queue` (0 for rows never claimed; a row
claimed before this migration gets a new token at its next claim, and its old worker, if one
is still running, is refused). ``retried_at`` keeps the time of a manual retry apart from
``created_at``. ``rows``/``columns`` of existing instances are read from their stored files
at start-up (``dicom_node.sizes``), outside any transaction: a migration does not know the
storage folder.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_fenced_queue"
down_revision = "0002_results"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("jobs", "outbox"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("lease_token", sa.Integer(), nullable=False, server_default="0")
            )
            batch.add_column(sa.Column("retried_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("rows", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("columns", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("columns")
        batch.drop_column("rows")
    for table in ("outbox", "jobs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("retried_at")
            batch.drop_column("lease_token")

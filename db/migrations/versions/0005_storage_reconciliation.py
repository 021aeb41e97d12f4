"""storage reconciliation: what each start-up found in the storage folder without a row

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_reconciliations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded", sa.Integer(), nullable=False),
        sa.Column("kept_aside", sa.Integer(), nullable=False),
        sa.Column("removed_temporary", sa.Integer(), nullable=False),
        sa.Column("removed_partial", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_reconciliations")),
    )


def downgrade() -> None:
    op.drop_table("storage_reconciliations")

"""regions: the suspected fracture regions (boxes) of each image prediction

Revision ID: 0006_regions
Revises: 0001_ingest
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_regions"
down_revision = "0001_ingest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image_predictions") as batch:
        batch.add_column(sa.Column("regions", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image_predictions") as batch:
        batch.drop_column("regions")

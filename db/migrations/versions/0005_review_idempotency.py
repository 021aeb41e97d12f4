"""review idempotency: one review per reviewer and Idempotency-Key

Revision ID: 0005_review_idempotency
Revises: 0003_review

A double click or a retried request carries the same client-generated key; the unique
constraint makes the database keep one review for it whichever API worker answers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_review_idempotency"
down_revision = "0003_review"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("request_sha256", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(
            "uq_reviews_reviewer_idempotency_key", ["reviewer_id", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_constraint("uq_reviews_reviewer_idempotency_key", type_="unique")
        batch_op.drop_column("request_sha256")
        batch_op.drop_column("idempotency_key")

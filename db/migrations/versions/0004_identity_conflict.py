"""identity conflict: the study's full patient identity and the flag that holds its analysis

Revision ID: 0004
Revises: 0003_review

The study keeps the identity its first instances gave it (Patient ID, Issuer of Patient ID,
Patient's Name, Patient's Birth Date); an instance naming another patient sets
``identity_conflict`` and analysis and delivery of the study wait for an admin.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003_review"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("patient_birth_date", sa.String(length=8), nullable=True))
        batch_op.add_column(
            sa.Column(
                "identity_conflict", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("identity_conflict")
        batch_op.drop_column("patient_birth_date")
        batch_op.drop_column("issuer_of_patient_id")

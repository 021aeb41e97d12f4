"""network audit: participant objects of DICOM network events on the audit trail

Revision ID: 0008_network_audit
Revises: 0007_reader_feedback

``audit_events`` gains the Study Instance UID, the Patient ID and the number of instances of a
network event (PS3.15 A.5.3.6 DICOM Instances Transferred). Columns are added in place (no
table copy), so the append-only triggers of 0003_review stay as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_network_audit"
down_revision = "0007_reader_feedback"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("study_instance_uid", sa.String(64), nullable=True))
    op.add_column("audit_events", sa.Column("patient_id", sa.String(64), nullable=True))
    op.add_column("audit_events", sa.Column("instance_count", sa.Integer(), nullable=True))
    op.create_index(
        "ix_audit_events_study_instance_uid", "audit_events", ["study_instance_uid"]
    )


def downgrade() -> None:
    op.drop_index("ix_audit_events_study_instance_uid", table_name="audit_events")
    with op.batch_alter_table("audit_events", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("instance_count")
        batch_op.drop_column("patient_id")
        batch_op.drop_column("study_instance_uid")

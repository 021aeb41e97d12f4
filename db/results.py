"""Result objects we created (SR, heat-map SCs, presentation states) and their delivery.

A result object is recorded once per SOP Instance UID: UIDs are derived deterministically
(:mod:`reporting.uids`), so re-analysing a study with the same model finds the same rows and
never makes a second copy. The outbox has one row per (result object, destination); its state
machine is driven by :mod:`dicom_node.outbox`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import Base, UtcDateTime, enum_column, utcnow
from db.models import UID


class ResultObjectKind(StrEnum):
    """What a result object is: the study's SR, one image's Grad-CAM Secondary Capture, or one
    image's Grayscale Softcopy Presentation State with its suspected fractures."""

    SR = "sr"
    SC = "sc"
    GSPS = "gsps"


class OutboxState(StrEnum):
    """Where one delivery is: waiting (or backing off), being sent, delivered, or given up."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD_LETTER = "dead_letter"


class ResultObject(Base):
    """One DICOM object we created and stored under ``<storage>/results/``."""

    __tablename__ = "result_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[ResultObjectKind] = mapped_column(enum_column(ResultObjectKind, 8))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    source_instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL"), index=True
    )
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    storage_path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    deliveries: Mapped[list[OutboxEntry]] = relationship(back_populates="result_object")


class OutboxEntry(Base):
    """The delivery of one result object to one destination (by its configured name)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_object_id: Mapped[int] = mapped_column(
        ForeignKey("result_objects.id", ondelete="CASCADE"), index=True
    )
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[OutboxState] = mapped_column(
        enum_column(OutboxState), default=OutboxState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    #: While ``sending``: when the sender's claim lapses and another sender may retake the row.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: The fencing token: incremented by every claim; a sender's outcome must match it.
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    #: The last DIMSE status the destination answered (PS3.7 Annex C), if it answered.
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    #: When an administrator last queued the dead letter again; the age limit counts from it.
    retried_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    result_object: Mapped[ResultObject] = relationship(back_populates="deliveries")

    __table_args__ = (
        UniqueConstraint(
            "result_object_id", "destination", name="uq_outbox_result_object_destination"
        ),
        Index("ix_outbox_state_next", "state", "next_attempt_at"),
    )

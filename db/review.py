"""People and their verdicts: users, machine tokens, login throttles, reviews and the append-only
audit trail.

The audit table is append-only: the ORM refuses to update or delete its rows (the hooks below)
and the migration adds database triggers that refuse the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    Delete,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Update,
    event,
)
from sqlalchemy.orm import Mapped, Mapper, ORMExecuteState, Session, mapped_column

from audit.codes import AuditAction as AuditAction
from audit.codes import AuditOutcome as AuditOutcome
from db.base import Base, UtcDateTime, enum_column, utcnow


class Role(StrEnum):
    """What a user or machine token may do: admins may do everything radiologists may."""

    RADIOLOGIST = "radiologist"
    ADMIN = "admin"


class Verdict(StrEnum):
    """The reviewer's opinion of the AI result."""

    AGREE = "agree"
    DISAGREE = "disagree"


class FractureLabel(StrEnum):
    """The reviewer's label for the study (the training export's class folders)."""

    FRACTURED = "fractured"
    NOT_FRACTURED = "not_fractured"


class User(Base):
    """A person who logs in with a password (argon2 hash only)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[Role] = mapped_column(enum_column(Role))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ApiToken(Base):
    """A long random token for a machine; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    #: The first characters of the token, shown in listings to tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[Role] = mapped_column(enum_column(Role))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ThrottleScope(StrEnum):
    """What failed logins are counted against: the submitted user name or the client address."""

    USER = "user"
    ADDRESS = "address"


class LoginThrottle(Base):
    """Failed logins of one user name or one client address, and the delay or lock they earned.

    Kept in the database so that every API process applies the same limits. The user name is
    the one submitted, whether or not such a user exists, so a lock says nothing about which
    names exist.
    """

    __tablename__ = "login_throttles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[ThrottleScope] = mapped_column(enum_column(ThrottleScope, 8))
    key: Mapped[str] = mapped_column(String(128))
    #: Consecutive failed (or still unresolved) attempts since the last success or forgetting.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    #: Attempts before this moment are answered 429 without checking the password.
    blocked_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: Set when the failures reached the lockout limit; only an admin clears it.
    locked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (UniqueConstraint("scope", "key", name="uq_login_throttles_scope_key"),)


class Review(Base):
    """A radiologist's verdict on a study's AI result, with a snapshot of what was reviewed."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    verdict: Mapped[Verdict] = mapped_column(enum_column(Verdict))
    label: Mapped[FractureLabel] = mapped_column(enum_column(FractureLabel))
    #: The image the location is on (or the image reviewed), if any.
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL"), index=True
    )
    location_x: Mapped[float | None] = mapped_column(Float)
    location_y: Mapped[float | None] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text)
    #: The AI result the verdict is about (None when the study had no result).
    study_prediction_id: Mapped[int | None] = mapped_column(
        ForeignKey("study_predictions.id", ondelete="SET NULL")
    )
    ai_probability: Mapped[float | None] = mapped_column(Float)
    ai_positive: Mapped[bool | None] = mapped_column(Boolean)
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    body_part: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    #: The client's key for the request that created the review: a repeated request with the
    #: same key (a double click, a retry) finds this review instead of adding a second one.
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    #: SHA-256 of the request (study and body), to refuse a key reused for another review.
    request_sha256: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_reviews_study_created", "study_id", "created_at"),
        # One review per reviewer and key, enforced by the database so it holds across workers.
        UniqueConstraint(
            "reviewer_id", "idempotency_key", name="uq_reviews_reviewer_idempotency_key"
        ),
    )


class FindingVerdict(StrEnum):
    """A reader's word on one suspected fracture region, or on a fracture the model missed."""

    CORRECT = "correct"  # this box is a fracture
    WRONG = "wrong"  # this box is not a fracture
    MISSED = "missed"  # a fracture here that the model did not box


class FindingFeedback(Base):
    """A reader's verdict on one of the model's boxes, or a box the reader drew (missed).

    A snapshot of what was judged is kept (the box, its probability and operating points,
    the model), so the feedback keeps its meaning after a re-analysis. Boxes are in the
    image's original pixel coordinates (x along columns).
    """

    __tablename__ = "finding_feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    verdict: Mapped[FindingVerdict] = mapped_column(enum_column(FindingVerdict))
    #: The image prediction whose box is judged (None for a missed fracture without one).
    image_prediction_id: Mapped[int | None] = mapped_column(
        ForeignKey("image_predictions.id", ondelete="SET NULL")
    )
    #: The box's position in that prediction's regions (None for a missed fracture).
    region_index: Mapped[int | None] = mapped_column(Integer)
    x0: Mapped[float] = mapped_column(Float)
    y0: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    ai_probability: Mapped[float | None] = mapped_column(Float)
    #: The operating points the box was positive at, comma-separated.
    operating_points: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    __table_args__ = (Index("ix_finding_feedback_instance_created", "instance_id", "created_at"),)


class AuditEvent(Base):
    """One audited event, coded with the DICOM audit vocabulary (PS3.15 A.5, CID 400-403).

    ``object_type``/``object_id`` name the object by internal id only; ``detail`` never holds
    patient data. Network events (instances transferred) also carry the participant object
    identifiers ATNA asks for: the Study Instance UID and the Patient ID, readable by admins
    only (docs/SECURITY.md).
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    event_id_code: Mapped[str] = mapped_column(String(16))
    event_id_meaning: Mapped[str] = mapped_column(String(64))
    event_type_code: Mapped[str | None] = mapped_column(String(16))
    event_type_meaning: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[AuditAction] = mapped_column(enum_column(AuditAction, 1))
    outcome: Mapped[int] = mapped_column(Integer)
    #: Who: ``user:<name>``, ``token:<name>``, ``cli:<os user>`` or ``anonymous``.
    actor: Mapped[str] = mapped_column(String(96), index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    client_ip: Mapped[str | None] = mapped_column(String(64))
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(String(256))
    #: Participant objects of a network event (PS3.15 A.5.3.6): the study and its patient.
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    #: How many instances the event concerned (one record per association and study).
    instance_count: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_audit_events_event_time", "event_id_code", "occurred_at"),)


class AuditTrailImmutable(RuntimeError):  # noqa: N818 - reads as a statement of the rule
    """Raised when code tries to change or remove an audit event."""


def _refuse_change(_mapper: Mapper[Any], _connection: Any, _target: AuditEvent) -> None:
    raise AuditTrailImmutable("audit events are append-only: they cannot be updated or deleted")


event.listen(AuditEvent, "before_update", _refuse_change)
event.listen(AuditEvent, "before_delete", _refuse_change)


@event.listens_for(Session, "do_orm_execute")
def _refuse_bulk_change(state: ORMExecuteState) -> None:
    """Refuse ``update(AuditEvent)`` / ``delete(AuditEvent)`` statements run through a session."""
    statement = state.statement
    if isinstance(statement, Update | Delete):
        table = getattr(statement, "table", None)
        if table is not None and getattr(table, "name", None) == AuditEvent.__tablename__:
            raise AuditTrailImmutable("audit events are append-only: bulk changes are refused")

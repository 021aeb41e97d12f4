"""Audit events recorded in the caller's transaction: who did what, when, from where, with what
outcome, on which object (the API, the CLI and the patient identity check; the DICOM node's
network events go through :mod:`audit.trail` instead).

Events are coded with the DICOM audit message vocabulary (PS3.15 A.5.3, PS3.16 CID 400-403,
coding scheme DCM). Events are added to the caller's session so that they commit together with
the work they describe (SQLite has one writer: a second session would wait on the first).
Only internal ids are recorded; ``detail`` never carries patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from audit.codes import Code
from db.review import AuditAction, AuditEvent, AuditOutcome


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: ``user:<name>``, ``token:<name>``, ``cli:<name>`` or ``anonymous``."""

    name: str
    user_id: int | None = None
    client_ip: str | None = None


ANONYMOUS = "anonymous"


def record(
    session: Session,
    actor: Actor,
    event: Code,
    action: AuditAction,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    *,
    event_type: Code | None = None,
    object_type: str | None = None,
    object_id: int | str | None = None,
    detail: str | None = None,
) -> AuditEvent:
    """Add one event to ``session``; the caller commits it with the work it describes."""
    row = AuditEvent(
        event_id_code=event.value,
        event_id_meaning=event.meaning,
        event_type_code=event_type.value if event_type else None,
        event_type_meaning=event_type.meaning if event_type else None,
        action=action,
        outcome=int(outcome),
        actor=actor.name[:96],
        user_id=actor.user_id,
        client_ip=actor.client_ip[:64] if actor.client_ip else None,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id)[:64],
        detail=detail[:256] if detail else None,
    )
    session.add(row)
    return row


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters on the audit trail; every field is optional."""

    actor: str | None = None
    event_id: str | None = None
    action: AuditAction | None = None
    outcome: AuditOutcome | None = None
    since: datetime | None = None
    until: datetime | None = None
    object_type: str | None = None
    object_id: str | None = None


def _filtered(query: AuditQuery) -> Select[AuditEvent]:
    stmt = select(AuditEvent)
    if query.actor is not None:
        stmt = stmt.where(AuditEvent.actor == query.actor)
    if query.event_id is not None:
        stmt = stmt.where(AuditEvent.event_id_code == query.event_id)
    if query.action is not None:
        stmt = stmt.where(AuditEvent.action == query.action)
    if query.outcome is not None:
        stmt = stmt.where(AuditEvent.outcome == int(query.outcome))
    if query.since is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(AuditEvent.occurred_at < query.until)
    if query.object_type is not None:
        stmt = stmt.where(AuditEvent.object_type == query.object_type)
    if query.object_id is not None:
        stmt = stmt.where(AuditEvent.object_id == query.object_id)
    return stmt


def search(
    session: Session, query: AuditQuery, *, limit: int, offset: int
) -> tuple[int, list[AuditEvent]]:
    """Matching events, newest first, and how many match in all."""
    stmt = _filtered(query)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(
        stmt.order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return int(total), list(rows)

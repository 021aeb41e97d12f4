"""Admin routes: the outbox (list, retry dead letters), patient identity conflicts (resolve),
login throttles (list, lift a lock) and the audit trail (read-only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from sqlalchemy.orm import Session

from api import throttle
from api.deps import AdminUser, ContextDep, ReaderDep, SessionDep
from api.schemas import (
    ADMIN_RESPONSES,
    NOT_FOUND,
    AuditEventOut,
    AuditPage,
    ErrorBody,
    IdentityConflictResolveIn,
    IdentityConflictResolveOut,
    LoginThrottleOut,
    LoginThrottlePage,
    OutboxPage,
    OutboxRowOut,
    RetryOut,
)
from audit import events
from audit.codes import EventId
from audit.events import AuditQuery
from db.models import Study
from db.results import OutboxEntry, OutboxState
from db.review import AuditAction, AuditOutcome
from dicom_node.identity import NoConflictError, resolve_conflict
from dicom_node.outbox import list_outbox, outbox_depths, retry_dead_letter

router = APIRouter(prefix="/api/admin", tags=["admin"], responses=ADMIN_RESPONSES)

Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]


def _aware(name: str, moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {
                    "loc": ["query", name],
                    "msg": "a timestamp needs a time zone (e.g. Z)",
                    "type": "value_error",
                }
            ],
        )
    return moment


@router.get("/outbox", response_model=OutboxPage)
def outbox(
    admin: AdminUser,
    session: SessionDep,
    context: ContextDep,
    state: OutboxState | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> OutboxPage:
    """Deliveries of result objects, newest first, optionally in one state."""
    events.record(
        session,
        admin.actor,
        EventId.QUERY,
        AuditAction.EXECUTE,
        object_type="outbox",
        detail=f"state={state.value if state else 'any'}",
    )
    session.commit()
    depths = outbox_depths(context.sessions)
    total = depths.get(state.value, 0) if state is not None else sum(depths.values())
    rows = list_outbox(context.sessions, state, limit=limit, offset=offset)
    items = [
        OutboxRowOut(
            id=row.id,
            study_id=row.study_id,
            result_object_id=row.result_object_id,
            kind=row.kind,
            destination=row.destination,
            state=row.state.value,
            attempts=row.attempts,
            last_status=row.last_status,
            last_error=row.last_error,
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
            sent_at=row.sent_at,
            updated_at=row.updated_at,
        )
        for row in rows
    ]
    return OutboxPage(total=total, limit=limit, offset=offset, items=items)


def _outbox_state(session: Session, outbox_id: int) -> str | None:
    entry = session.get(OutboxEntry, outbox_id)
    return None if entry is None else str(entry.state)


@router.post(
    "/outbox/{outbox_id}/retry",
    response_model=RetryOut,
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "Not a dead letter"}},
)
def retry(
    outbox_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    admin: AdminUser,
    reader: ReaderDep,
    session: SessionDep,
    context: ContextDep,
) -> RetryOut:
    """Queue a dead-lettered delivery again."""
    before = _outbox_state(reader, outbox_id)
    requeued = before is not None and retry_dead_letter(context.sessions, outbox_id)
    events.record(
        session,
        admin.actor,
        EventId.BEGIN_TRANSFERRING,
        AuditAction.EXECUTE,
        AuditOutcome.SUCCESS if requeued else AuditOutcome.MINOR_FAILURE,
        object_type="outbox",
        object_id=outbox_id,
        detail="dead letter queued again" if requeued else "retry refused",
    )
    session.commit()
    if before is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such outbox row")
    if not requeued:
        raise HTTPException(status.HTTP_409_CONFLICT, "only dead-lettered rows can be retried")
    return RetryOut(id=outbox_id, state=OutboxState.PENDING.value)


@router.post(
    "/studies/{study_id}/identity-conflict/resolve",
    response_model=IdentityConflictResolveOut,
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "No conflict to resolve"}},
)
def resolve_identity_conflict(
    study_id: Annotated[int, Path(ge=1, le=2**31 - 1, description="The study's internal id")],
    body: IdentityConflictResolveIn,
    admin: AdminUser,
    session: SessionDep,
) -> IdentityConflictResolveOut:
    """Resolve a study's patient identity conflict; analysis and delivery then resume."""
    study = session.get(Study, study_id, with_for_update=True)
    refusal: tuple[int, str] | None = None
    if study is None:
        refusal = (status.HTTP_404_NOT_FOUND, "no such study")
    else:
        try:
            resolution = resolve_conflict(session, study, body.decision, admin.actor)
        except NoConflictError:
            refusal = (status.HTTP_409_CONFLICT, "the study has no identity conflict to resolve")
    if refusal is not None:
        events.record(
            session,
            admin.actor,
            EventId.PATIENT_RECORD,
            AuditAction.UPDATE,
            AuditOutcome.MINOR_FAILURE,
            object_type="study",
            object_id=study_id,
            detail=f"identity conflict resolution refused: {refusal[1]}",
        )
        session.commit()
        raise HTTPException(*refusal)
    session.commit()
    return IdentityConflictResolveOut(
        study_id=resolution.study_id,
        decision=resolution.decision,
        excluded_image_ids=resolution.excluded_instance_ids,
    )


@router.get("/login-throttles", response_model=LoginThrottlePage)
def login_throttles(
    admin: AdminUser, reader: ReaderDep, session: SessionDep, context: ContextDep
) -> LoginThrottlePage:
    """User names and client addresses with failed logins, locked ones first."""
    rows = throttle.current(reader, context.clock())
    page = LoginThrottlePage(items=[LoginThrottleOut.model_validate(row) for row in rows])
    events.record(session, admin.actor, EventId.QUERY, AuditAction.EXECUTE, object_type="login")
    session.commit()
    return page


@router.post(
    "/login-throttles/{throttle_id}/lift",
    response_model=LoginThrottleOut,
    responses=NOT_FOUND,
)
def lift_login_throttle(
    throttle_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    admin: AdminUser,
    session: SessionDep,
) -> LoginThrottleOut:
    """Lift a lock (and any delay) on a user name or client address; audited (110113)."""
    row = throttle.lift(session, admin.actor, throttle_id)
    session.commit()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such login throttle")
    return LoginThrottleOut.model_validate(row)


@router.get("/audit", response_model=AuditPage)
def audit_trail(
    admin: AdminUser,
    reader: ReaderDep,
    session: SessionDep,
    actor: Annotated[
        str | None, Query(max_length=96, description="e.g. user:alice or token:pacs")
    ] = None,
    event_id: Annotated[
        str | None, Query(pattern=r"^\d{6}$", description="DCM Event ID code, e.g. 110110")
    ] = None,
    action: AuditAction | None = None,
    outcome: AuditOutcome | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    object_type: Annotated[str | None, Query(max_length=32)] = None,
    object_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> AuditPage:
    """The audit trail, newest first; reading it is itself audited (Audit Log Used)."""
    query = AuditQuery(
        actor=actor,
        event_id=event_id,
        action=action,
        outcome=outcome,
        since=_aware("since", since),
        until=_aware("until", until),
        object_type=object_type,
        object_id=object_id,
    )
    total, rows = events.search(reader, query, limit=limit, offset=offset)
    page = AuditPage(
        total=total,
        limit=limit,
        offset=offset,
        items=[AuditEventOut.model_validate(row) for row in rows],
    )
    events.record(session, admin.actor, EventId.AUDIT_LOG_USED, AuditAction.READ)
    session.commit()
    return page

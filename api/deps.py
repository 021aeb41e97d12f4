"""Dependencies every route shares: the application context, sessions, the caller.

Each request has two sessions. ``ReaderDep`` reads (``db.engine.reading``: never SQLite's write
lock, so a radiologist browsing never slows ingest); ``SessionDep`` writes, in short
transactions begun at first use (``BEGIN IMMEDIATE`` on SQLite): audit events go into it and
commit with the work they describe. A route reads with the reader, then records and commits;
it never reads files while the writer's transaction is open. ``CurrentUser`` accepts a person's
JWT or a machine token; ``AdminUser`` additionally requires the admin role.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api.model_slot import ModelSlot
from api.security import (
    InvalidCredentials,
    decode_access_token,
    is_machine_token,
    machine_token_digest,
)
from audit import events
from audit.codes import EventId, EventType
from audit.events import Actor
from config.settings import Settings
from db.base import utcnow
from db.engine import reading
from db.review import ApiToken, AuditAction, AuditOutcome, Role, User
from dicom_node.storage import InstanceStore


@dataclass(frozen=True)
class AppContext:
    """What the routes need, made once at start-up and passed in."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: InstanceStore
    signing_key: str
    model: ModelSlot
    #: Now, in UTC: the login throttle's clock (tests move it instead of waiting).
    clock: Callable[[], datetime] = utcnow


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    with context.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_reader(context: ContextDep) -> Iterator[Session]:
    with reading(context.sessions) as session:
        yield session


ReaderDep = Annotated[Session, Depends(get_reader)]

oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl="/api/auth/login",
    auto_error=False,
    description="A person's access token from /api/auth/login, or a machine token.",
)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


class PrincipalKind(StrEnum):
    USER = "user"
    TOKEN = "token"  # noqa: S105 - a kind of caller, not a secret


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a person (user) or a machine (token)."""

    kind: PrincipalKind
    id: int
    name: str
    role: Role
    client_ip: str | None

    @property
    def actor(self) -> Actor:
        return Actor(
            f"{self.kind.value}:{self.name}",
            self.id if self.kind is PrincipalKind.USER else None,
            self.client_ip,
        )

    @property
    def user_id(self) -> int | None:
        return self.id if self.kind is PrincipalKind.USER else None


def _unauthorised(detail: str = "not authenticated") -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


def _refuse(session: Session, request: Request, reason: str) -> HTTPException:
    """Audit a failed authentication, commit it, and return the 401 to raise."""
    events.record(
        session,
        Actor(events.ANONYMOUS, None, client_ip(request)),
        EventId.USER_AUTHENTICATION,
        AuditAction.EXECUTE,
        AuditOutcome.MINOR_FAILURE,
        event_type=EventType.LOGIN,
        detail=reason,
    )
    session.commit()
    return _unauthorised("invalid or expired credentials")


def _machine_principal(
    reader: Session, session: Session, request: Request, token: str
) -> Principal:
    row = reader.scalar(
        select(ApiToken).where(ApiToken.token_sha256 == machine_token_digest(token))
    )
    now = utcnow()
    if row is None:
        raise _refuse(session, request, "unknown machine token")
    if row.revoked_at is not None:
        raise _refuse(session, request, f"revoked machine token id {row.id}")
    if row.expires_at is not None and row.expires_at <= now:
        raise _refuse(session, request, f"expired machine token id {row.id}")
    session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    principal = Principal(PrincipalKind.TOKEN, row.id, row.name, Role(row.role), client_ip(request))
    events.record(
        session,
        principal.actor,
        EventId.USER_AUTHENTICATION,
        AuditAction.EXECUTE,
        event_type=EventType.LOGIN,
        object_type="api_token",
        object_id=row.id,
        detail="machine token used",
    )
    session.commit()
    return principal


def current_principal(
    request: Request,
    context: ContextDep,
    reader: ReaderDep,
    session: SessionDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> Principal:
    """The caller, from the bearer token; 401 when missing, invalid, expired or disabled."""
    if not token:
        raise _unauthorised()
    if is_machine_token(token):
        return _machine_principal(reader, session, request, token)
    try:
        claims = decode_access_token(context.signing_key, token)
    except InvalidCredentials:
        raise _refuse(session, request, "invalid or expired access token") from None
    user = reader.get(User, claims.user_id)
    if user is None or not user.active:
        raise _refuse(
            session, request, f"access token of unknown or disabled user id {claims.user_id}"
        )
    return Principal(
        PrincipalKind.USER, user.id, user.username, Role(user.role), client_ip(request)
    )


CurrentUser = Annotated[Principal, Depends(current_principal)]


def require_admin(principal: CurrentUser, session: SessionDep, request: Request) -> Principal:
    """The caller, if an admin; 403 (audited as a security alert) otherwise."""
    if principal.role != Role.ADMIN:
        events.record(
            session,
            principal.actor,
            EventId.SECURITY_ALERT,
            AuditAction.EXECUTE,
            AuditOutcome.MINOR_FAILURE,
            event_type=EventType.USE_OF_RESTRICTED_FUNCTION,
            detail=f"{request.method} on an admin route refused",
        )
        session.commit()
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the admin role")
    return principal


AdminUser = Annotated[Principal, Depends(require_admin)]

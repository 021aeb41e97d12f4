"""Log in with a password for an access token; see who the token belongs to."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import select, update

from api import audit
from api.audit import Actor, EventId, EventType
from api.deps import ContextDep, CurrentUser, ReaderDep, SessionDep, client_ip
from api.schemas import AUTH_RESPONSES, AccessTokenOut, MeOut
from api.security import issue_access_token, verify_password
from db.base import utcnow
from db.review import AuditAction, AuditOutcome, Role, User

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/login", response_model=AccessTokenOut, responses=AUTH_RESPONSES)
def login(
    request: Request,
    context: ContextDep,
    reader: ReaderDep,
    session: SessionDep,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
) -> AccessTokenOut:
    """Exchange a user name and password for a bearer access token (OAuth2 password flow)."""
    # Read, then verify the password (slow on purpose) outside any write transaction.
    user = reader.scalar(select(User).where(User.username == form.username))
    ok = verify_password(user.password_hash if user else None, form.password)
    if user is None or not ok or not user.active:
        audit.record(
            session,
            Actor(audit.ANONYMOUS, None, client_ip(request)),
            EventId.USER_AUTHENTICATION,
            AuditAction.EXECUTE,
            AuditOutcome.MINOR_FAILURE,
            event_type=EventType.LOGIN,
            object_type="user" if user else None,
            object_id=user.id if user else None,
            detail="login refused",
        )
        session.commit()
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong user name or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    now = utcnow()
    session.execute(update(User).where(User.id == user.id).values(last_login_at=now))
    audit.record(
        session,
        Actor(f"user:{user.username}", user.id, client_ip(request)),
        EventId.USER_AUTHENTICATION,
        AuditAction.EXECUTE,
        event_type=EventType.LOGIN,
        object_type="user",
        object_id=user.id,
        detail="login",
    )
    session.commit()
    issued = issue_access_token(
        context.signing_key,
        user.id,
        Role(user.role),
        minutes=context.settings.api.token_expiry_minutes,
        now=now,
    )
    return AccessTokenOut(access_token=issued.token, expires_at=issued.expires_at)


@router.get("/me", response_model=MeOut, responses=AUTH_RESPONSES)
def me(principal: CurrentUser) -> MeOut:
    """Who the bearer token belongs to and their role."""
    return MeOut(kind=principal.kind.value, name=principal.name, role=principal.role)

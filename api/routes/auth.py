"""Log in with a password for an access token; see who the token belongs to."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api import throttle
from api.deps import ContextDep, CurrentUser, ReaderDep, SessionDep, client_ip
from api.schemas import AUTH_RESPONSES, AccessTokenOut, ErrorBody, MeOut
from api.security import issue_access_token, verify_password
from audit import events
from audit.codes import EventId, EventType
from audit.events import Actor
from db.review import AuditAction, AuditOutcome, LoginThrottle, Role, ThrottleScope, User

router = APIRouter(prefix="/api/auth", tags=["auth"])


THROTTLE_RESPONSES: dict[int | str, dict[str, object]] = {
    423: {"model": ErrorBody, "description": "Locked after repeated failed logins"},
    429: {
        "model": ErrorBody,
        "description": "Too many failed logins: try again after Retry-After seconds",
    },
}


def _audit_login(
    session: Session,
    actor: Actor,
    outcome: AuditOutcome,
    detail: str,
    *,
    user_id: int | None = None,
) -> None:
    """One User Authentication / Login event (PS3.15 A.5.3.8, DCM 110114 / 110122)."""
    events.record(
        session,
        actor,
        EventId.USER_AUTHENTICATION,
        AuditAction.EXECUTE,
        outcome,
        event_type=EventType.LOGIN,
        object_type="user" if user_id is not None else None,
        object_id=user_id,
        detail=detail,
    )


def _audit_lock(session: Session, actor: Actor, row: LoginThrottle) -> None:
    """A Security Alert (DCM 110113) for a user name or address locked by failed logins."""
    events.record(
        session,
        actor,
        EventId.SECURITY_ALERT,
        AuditAction.EXECUTE,
        AuditOutcome.MINOR_FAILURE,
        event_type=(
            EventType.USER_SECURITY_ATTRIBUTES_CHANGED
            if row.scope is ThrottleScope.USER
            else EventType.SECURITY_CONFIGURATION
        ),
        object_type="login_throttle",
        object_id=row.id,
        detail=f"{row.scope.value} locked after {row.failures} failed logins",
    )


def _refused(refusal: throttle.Refusal) -> HTTPException:
    if refusal.locked:
        return HTTPException(
            status.HTTP_423_LOCKED,
            "locked after repeated failed logins; an administrator can lift the lock",
        )
    assert refusal.retry_after_s is not None
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        "too many failed logins; try again later",
        headers={"Retry-After": str(refusal.retry_after_s)},
    )


@router.post("/login", response_model=AccessTokenOut, responses=AUTH_RESPONSES | THROTTLE_RESPONSES)
def login(
    request: Request,
    context: ContextDep,
    reader: ReaderDep,
    session: SessionDep,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
) -> AccessTokenOut:
    """Exchange a user name and password for a bearer access token (OAuth2 password flow).

    Failed logins are throttled per user name and per client address (:mod:`api.throttle`):
    429 with Retry-After inside a delay window, 423 once locked; the password is then not
    checked. The attempt is counted in its own short write transaction before the password is
    checked; the user is looked up with the reader and the password verified (slow on purpose)
    with no write transaction open; the outcome (audit, throttle) is another short write.
    """
    policy = throttle.ThrottlePolicy.from_settings(context.settings.api.login_throttle)
    address = client_ip(request)
    subject = throttle.Subject.of(form.username, address)
    anonymous = Actor(events.ANONYMOUS, None, address)
    refusal = throttle.admit(session, policy, subject, context.clock())
    if refusal is not None:
        kind = "locked" if refusal.locked else "throttled"
        _audit_login(
            session, anonymous, AuditOutcome.MINOR_FAILURE, f"login {kind} ({refusal.scope})"
        )
        session.commit()
        raise _refused(refusal)
    session.commit()  # the attempt is counted before the password is checked

    user = reader.scalar(select(User).where(User.username == form.username))
    ok = verify_password(user.password_hash if user else None, form.password)
    if user is None or not ok or not user.active:
        for row in throttle.failed(session, policy, subject, context.clock()):
            _audit_lock(session, anonymous, row)
        _audit_login(
            session,
            anonymous,
            AuditOutcome.MINOR_FAILURE,
            "login refused",
            user_id=user.id if user else None,
        )
        session.commit()
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong user name or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    throttle.succeeded(session, policy, subject)
    now = context.clock()
    session.execute(update(User).where(User.id == user.id).values(last_login_at=now))
    _audit_login(
        session,
        Actor(f"user:{user.username}", user.id, address),
        AuditOutcome.SUCCESS,
        "login",
        user_id=user.id,
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

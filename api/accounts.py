"""Users and machine tokens: create, list, disable, revoke; each change is audited.

Shared by the command line and the tests; the caller owns the session and commits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.security import (
    SHOWN_PREFIX_LENGTH,
    hash_password,
    machine_token_digest,
    new_machine_token,
)
from audit import events
from audit.codes import EventId, EventType
from audit.events import Actor
from db.base import utcnow
from db.review import ApiToken, AuditAction, Role, User

#: User and token names: letters, digits and ``._@-``; no spaces, 1-64 characters.
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD_LENGTH = 8


class AccountError(ValueError):
    """A user or token request that cannot be carried out (bad name, duplicate, unknown)."""


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise AccountError(f"{what} must be 1-64 characters of letters, digits and ._@-")
    return name


def create_user(session: Session, actor: Actor, username: str, password: str, role: Role) -> User:
    """Add an active user with an argon2-hashed password."""
    _check_name(username, "a user name")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise AccountError("a user with this name exists already")
    user = User(username=username, password_hash=hash_password(password), role=role, active=True)
    session.add(user)
    session.flush()
    events.record(
        session,
        actor,
        EventId.SECURITY_ALERT,
        AuditAction.CREATE,
        event_type=EventType.USER_SECURITY_ATTRIBUTES_CHANGED,
        object_type="user",
        object_id=user.id,
        detail=f"user added with role {role.value}",
    )
    return user


def set_active(session: Session, actor: Actor, username: str, *, active: bool) -> User:
    """Disable (or enable again) a user; disabled users' tokens stop working at once."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AccountError("no such user")
    user.active = active
    events.record(
        session,
        actor,
        EventId.SECURITY_ALERT,
        AuditAction.UPDATE,
        event_type=EventType.USER_SECURITY_ATTRIBUTES_CHANGED,
        object_type="user",
        object_id=user.id,
        detail="user enabled" if active else "user disabled",
    )
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new machine token: the clear value is shown once and never stored."""

    token: str
    row: ApiToken


def create_token(
    session: Session,
    actor: Actor,
    name: str,
    role: Role,
    *,
    expires_in: timedelta | None = None,
    now: datetime | None = None,
) -> IssuedToken:
    """Issue a machine token with a role and an optional expiry."""
    _check_name(name, "a token name")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise AccountError("a token with this name exists already")
    now = now or utcnow()
    token = new_machine_token()
    row = ApiToken(
        name=name,
        token_sha256=machine_token_digest(token),
        prefix=token[:SHOWN_PREFIX_LENGTH],
        role=role,
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    session.add(row)
    session.flush()
    events.record(
        session,
        actor,
        EventId.SECURITY_ALERT,
        AuditAction.CREATE,
        event_type=EventType.SECURITY_CONFIGURATION,
        object_type="api_token",
        object_id=row.id,
        detail=f"machine token issued with role {role.value}",
    )
    return IssuedToken(token, row)


def revoke_token(session: Session, actor: Actor, name: str) -> ApiToken:
    """Revoke a machine token by name; it is refused from then on."""
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise AccountError("no such token")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    events.record(
        session,
        actor,
        EventId.SECURITY_ALERT,
        AuditAction.UPDATE,
        event_type=EventType.SECURITY_CONFIGURATION,
        object_type="api_token",
        object_id=row.id,
        detail="machine token revoked",
    )
    return row


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))

"""Login throttling: an exponential delay per user name and per client address, then a lock.

Every attempt is counted before its password is checked (``admit``), under a row lock, so that
parallel attempts cannot all slip through one open window; a success then takes its count back
(``succeeded``), a failure may lock (``failed``). While a user name or address is in its delay
window, or locked, the password is not checked at all: the caller answers 429 with Retry-After
(or 423) at once, never by sleeping in the request. The state lives in the database so that
several API processes share it (SQLite serialises writers; PostgreSQL locks the two rows, always
user then address, so two processes cannot deadlock).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from audit import events
from audit.codes import EventId, EventType
from audit.events import Actor
from config.settings import LoginThrottleSettings
from db.review import AuditAction, AuditOutcome, LoginThrottle, ThrottleScope

#: Longest key kept (a submitted user name can be anything the form carries).
KEY_LENGTH = 128
UNKNOWN_ADDRESS = "unknown"
#: Doubling stops here; 2**32 seconds is far beyond any configured maximum.
_MAX_DOUBLINGS = 32


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """The limits of :class:`config.settings.LoginThrottleSettings`, with the delay rule."""

    free_failures: int
    base_delay: timedelta
    max_delay: timedelta
    user_lockout_after: int
    address_lockout_after: int
    forget_after: timedelta

    @classmethod
    def from_settings(cls, settings: LoginThrottleSettings) -> ThrottlePolicy:
        return cls(
            free_failures=settings.free_failures,
            base_delay=timedelta(seconds=settings.base_delay_s),
            max_delay=timedelta(seconds=settings.max_delay_s),
            user_lockout_after=settings.user_lockout_after,
            address_lockout_after=settings.address_lockout_after,
            forget_after=timedelta(seconds=settings.forget_after_s),
        )

    def delay(self, failures: int) -> timedelta:
        """The window after the ``failures``-th failure: none, then base, 2 x base, 4 x base..."""
        over = failures - self.free_failures
        if over <= 0:
            return timedelta(0)
        doubled: timedelta = self.base_delay * (2 ** min(over - 1, _MAX_DOUBLINGS))
        return min(doubled, self.max_delay)

    def lockout_after(self, scope: ThrottleScope) -> int:
        if scope is ThrottleScope.USER:
            return self.user_lockout_after
        return self.address_lockout_after


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is trying: the submitted user name and the client address, as throttle keys."""

    username: str
    address: str

    @classmethod
    def of(cls, username: str, address: str | None) -> Subject:
        return cls(username[:KEY_LENGTH], (address or UNKNOWN_ADDRESS)[:KEY_LENGTH])

    def scoped_keys(self) -> tuple[tuple[ThrottleScope, str], tuple[ThrottleScope, str]]:
        """Always user, then address: the order in which the rows are locked."""
        return ((ThrottleScope.USER, self.username), (ThrottleScope.ADDRESS, self.address))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an attempt is refused before its password is checked."""

    scope: ThrottleScope
    row_id: int
    locked: bool
    #: Whole seconds until the window ends (None when locked).
    retry_after_s: int | None


def _locked_rows(session: Session, subject: Subject) -> list[LoginThrottle]:
    """The subject's two rows, created if missing, locked until the transaction ends."""
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    rows = []
    for scope, key in subject.scoped_keys():
        session.execute(
            insert(LoginThrottle)
            .values(scope=scope.value, key=key, failures=0)
            .on_conflict_do_nothing(index_elements=["scope", "key"])
        )
        rows.append(
            session.scalars(
                select(LoginThrottle)
                .where(LoginThrottle.scope == scope, LoginThrottle.key == key)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).one()
        )
    return rows


def admit(
    session: Session, policy: ThrottlePolicy, subject: Subject, now: datetime
) -> Refusal | None:
    """Refuse the attempt, or count it as a failure until it succeeds; the caller commits."""
    rows = _locked_rows(session, subject)
    for row in rows:
        stale = row.last_failure_at is not None and row.last_failure_at < now - policy.forget_after
        if stale and row.locked_at is None:
            row.failures, row.blocked_until = 0, None
    for row in rows:
        if row.locked_at is not None:
            return Refusal(row.scope, row.id, locked=True, retry_after_s=None)
    waiting = [row for row in rows if row.blocked_until is not None and row.blocked_until > now]
    if waiting:
        row = max(waiting, key=lambda r: r.blocked_until or now)
        assert row.blocked_until is not None
        seconds = math.ceil((row.blocked_until - now).total_seconds())
        return Refusal(row.scope, row.id, locked=False, retry_after_s=max(1, seconds))
    for row in rows:
        row.failures += 1
        row.last_failure_at = now
        window = policy.delay(row.failures)
        row.blocked_until = now + window if window else None
    return None


def succeeded(session: Session, policy: ThrottlePolicy, subject: Subject) -> None:
    """Take back the attempt ``admit`` counted: the user name starts afresh; the address keeps
    its other failures (a password sprayer's own good login must not clear them)."""
    user, address = _locked_rows(session, subject)
    if user.locked_at is None:
        user.failures, user.blocked_until = 0, None
    address.failures = max(0, address.failures - 1)
    if address.failures <= policy.free_failures:
        address.blocked_until = None


def failed(
    session: Session, policy: ThrottlePolicy, subject: Subject, now: datetime
) -> list[LoginThrottle]:
    """Confirm the counted failure; returns the rows it locked just now. Also forgets rows of
    names and addresses that have not failed for ``forget_after`` (so unknown names tried once
    do not pile up)."""
    newly_locked = []
    for row in _locked_rows(session, subject):
        limit = policy.lockout_after(row.scope)
        if row.locked_at is not None:
            continue
        if limit and row.failures >= limit:
            row.locked_at = now
            row.blocked_until = None
            newly_locked.append(row)
            continue
        # The window runs from the failure, not from the admission before the password check.
        window = policy.delay(row.failures)
        if window and (row.blocked_until is None or row.blocked_until < now + window):
            row.blocked_until = now + window
    session.execute(
        delete(LoginThrottle).where(
            LoginThrottle.locked_at.is_(None),
            LoginThrottle.last_failure_at < now - policy.forget_after,
        )
    )
    return newly_locked


def current(session: Session, now: datetime) -> list[LoginThrottle]:
    """Rows that hold something: a lock, a delay window still open, or counted failures."""
    return list(
        session.scalars(
            select(LoginThrottle)
            .where(
                (LoginThrottle.locked_at.is_not(None))
                | (LoginThrottle.blocked_until > now)
                | (LoginThrottle.failures > 0)
            )
            .order_by(
                LoginThrottle.locked_at.desc().nulls_last(),
                LoginThrottle.last_failure_at.desc().nulls_last(),
            )
        )
    )


def find(session: Session, scope: ThrottleScope, key: str) -> LoginThrottle | None:
    return session.scalar(
        select(LoginThrottle).where(LoginThrottle.scope == scope, LoginThrottle.key == key)
    )


def lift(session: Session, actor: Actor, row_id: int) -> LoginThrottle | None:
    """Clear a row's lock, window and count (an admin's decision), audited as a Security Alert
    (DCM 110113, 110137); None when there is no such row. The caller commits."""
    row = session.get(LoginThrottle, row_id, with_for_update=True)
    if row is not None:
        row.failures, row.blocked_until, row.locked_at = 0, None, None
    events.record(
        session,
        actor,
        EventId.SECURITY_ALERT,
        AuditAction.UPDATE,
        AuditOutcome.SUCCESS if row is not None else AuditOutcome.MINOR_FAILURE,
        event_type=EventType.USER_SECURITY_ATTRIBUTES_CHANGED,
        object_type="login_throttle",
        object_id=row_id,
        detail=f"login lock lifted ({row.scope})" if row is not None else "no such login throttle",
    )
    return row

"""A fenced work queue kept in a database table: claim with a lease, renew it, settle by token.

The analysis jobs (:mod:`db.jobs`) and the deliveries of result objects
(:mod:`dicom_node.outbox`) are two instances of :class:`Queue`. A row is the unit of work:

- **claim** takes due rows (pending and due, or running with a lapsed lease) and makes them
  running with a lease, one more attempt counted and a new **fencing token** (``lease_token``,
  incremented by every claim, never reused). PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED``
  then ``UPDATE``; SQLite: the same inside ``BEGIN IMMEDIATE``, which serialises claimers.
- the worker **renews** the lease while it works (:class:`Heartbeat`, every ``lease_s / 3``),
  so a short lease keeps a slow job its own and lets a dead worker's job be retaken soon.
- every change a worker makes (**complete**, **fail**, **release**, and the work's own writes
  through :meth:`Queue.ensure_held`) matches ``id``, ``lease_token`` and the running state. A
  worker whose lease lapsed and whose row was claimed again is refused: its token is stale.
- **fail** retries with exponential backoff, or gives up (the dead state) after the attempts or
  the age allowed; **retry_dead** queues dead rows again, recording ``retried_at`` (the age of a
  row is counted from ``retried_at`` when set, else ``created_at``, which is never rewritten).

A message queue (Celery on RabbitMQ) can carry only a row id: the task claims that row with
:meth:`Queue.claim` (``row_id``) and settles it like any other worker, so a lost or duplicated
message never loses or doubles work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from db.base import Base, utcnow
from db.engine import reading, writing

log = logging.getLogger(__name__)

#: Errors are stored truncated; they never contain patient data (callers pass type and reason).
MAX_ERROR_LENGTH = 2000


class LeaseLostError(RuntimeError):
    """The row is no longer this worker's: its lease lapsed and it was claimed again, or it
    was settled meanwhile. The worker must stop and write nothing more for it."""


@dataclass(frozen=True, slots=True)
class QueueStates:
    """The four states of a queue's rows, as that table names them."""

    pending: StrEnum
    running: StrEnum
    done: StrEnum
    dead: StrEnum


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed row: its id, the fencing token of this claim, and the attempt it runs."""

    id: int
    token: int
    attempt: int


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed attempt is retried, and when the row is given up (made dead).

    ``max_attempts`` None: the row's own ``max_attempts`` column decides. ``max_age_s`` None:
    no age limit; otherwise counted from ``retried_at`` (a manual retry) or ``created_at``.
    """

    backoff_base_s: float
    backoff_max_s: float
    max_attempts: int | None = None
    max_age_s: float | None = None


def backoff_delay(attempt: int, *, base_s: float, max_s: float) -> float:
    """Exponential backoff: ``base * 2**(attempt-1)``, capped at ``max_s``."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    return float(min(max_s, base_s * (2 ** min(attempt - 1, 32))))


class Queue:
    """One table's queue operations.

    The table has the columns ``id``, ``state``, ``attempts``, ``lease_token``,
    ``lease_expires_at``, ``last_error``, ``created_at`` and ``retried_at``, plus the column
    named by ``due`` (when a pending row may run). ``started``, ``finished`` and
    ``max_attempts`` name optional columns. ``held`` gives a condition that keeps otherwise
    due rows waiting (a study in identity conflict).
    """

    def __init__(
        self,
        table: type[Base],
        states: QueueStates,
        *,
        due: str,
        started: str | None = None,
        finished: str | None = None,
        max_attempts: str | None = None,
        held: Callable[[], ColumnElement[bool]] | None = None,
    ) -> None:
        self.table = table
        self.states = states
        self._due_name = due
        self._started = started
        self._finished = finished
        self._max_attempts = max_attempts
        self._held = held

    # Columns ---------------------------------------------------------------------------------
    def _column(self, name: str) -> InstrumentedAttribute[Any]:
        column: InstrumentedAttribute[Any] = getattr(self.table, name)
        return column

    @property
    def _id(self) -> InstrumentedAttribute[Any]:
        return self._column("id")

    @property
    def _state(self) -> InstrumentedAttribute[Any]:
        return self._column("state")

    @property
    def _token(self) -> InstrumentedAttribute[Any]:
        return self._column("lease_token")

    @property
    def _lease(self) -> InstrumentedAttribute[Any]:
        return self._column("lease_expires_at")

    @property
    def _due(self) -> InstrumentedAttribute[Any]:
        return self._column(self._due_name)

    def fenced(self, claim: Claim) -> ColumnElement[bool]:
        """The condition every change by a worker carries: still its claim, still running."""
        return and_(
            self._id == claim.id,
            self._token == claim.token,
            self._state == self.states.running,
        )

    def due_condition(self, now: datetime) -> ColumnElement[bool]:
        """Rows a worker may claim at ``now``: pending and due, or running with a lapsed lease."""
        return or_(
            and_(self._state == self.states.pending, self._due <= now),
            and_(self._state == self.states.running, self._lease < now),
        )

    # Claiming --------------------------------------------------------------------------------
    def any_due(
        self,
        sessions: sessionmaker[Session],
        *,
        now: datetime | None = None,
        row_id: int | None = None,
    ) -> bool:
        """Whether a row looks due, read without the write lock (a claim may still find none)."""
        conditions = [self.due_condition(now or utcnow())]
        if row_id is not None:
            conditions.append(self._id == row_id)
        with reading(sessions) as session:
            return session.scalar(select(self._id).where(*conditions).limit(1)) is not None

    def due_rows(
        self, sessions: sessionmaker[Session], *, now: datetime | None = None, limit: int = 1000
    ) -> list[tuple[int, int]]:
        """``(id, lease_token)`` of rows a claim would take now, oldest due first; read only.

        For a dispatcher that publishes row ids to a message queue: the token tells a row that
        was claimed since it was last published (a lapsed lease, a retry) from one still waiting.
        """
        conditions = [self.due_condition(now or utcnow())]
        if self._held is not None:
            conditions.append(~self._held())
        with reading(sessions) as session:
            rows = session.execute(
                select(self._id, self._token)
                .where(*conditions)
                .order_by(self._due, self._id)
                .limit(limit)
            ).all()
        return [(int(row_id), int(token)) for row_id, token in rows]

    def claim_in(
        self,
        session: Session,
        *,
        lease_s: float,
        limit: int = 1,
        now: datetime | None = None,
        row_id: int | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` due rows (only ``row_id``, if given) in the caller's write
        transaction; oldest due first."""
        if lease_s < 0 or limit < 1:
            raise ValueError(f"the lease must be >= 0 and the limit >= 1: {lease_s}, {limit}")
        now = now or utcnow()
        conditions = [self.due_condition(now)]
        if self._held is not None:
            conditions.append(~self._held())
        if row_id is not None:
            conditions.append(self._id == row_id)
        ids = list(
            session.scalars(
                select(self._id)
                .where(*conditions)
                .order_by(self._due, self._id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=self.table)
            )
        )
        if not ids:
            return []
        values: dict[Any, Any] = {
            self._state: self.states.running,
            self._column("attempts"): self._column("attempts") + 1,
            self._token: self._token + 1,
            self._lease: now + timedelta(seconds=lease_s),
        }
        if self._started is not None:
            values[self._column(self._started)] = now
        session.execute(
            update(self.table)
            .where(self._id.in_(ids), *conditions)
            .values(values)
            .execution_options(synchronize_session=False)
        )
        claimed = {
            row_id: Claim(row_id, token, attempt)
            for row_id, token, attempt in session.execute(
                select(self._id, self._token, self._column("attempts")).where(
                    self._id.in_(ids), self._state == self.states.running
                )
            )
        }
        return [claimed[i] for i in ids if i in claimed]

    def claim(
        self,
        sessions: sessionmaker[Session],
        *,
        lease_s: float,
        limit: int = 1,
        now: datetime | None = None,
        row_id: int | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` due rows in a transaction of its own (see :meth:`claim_in`).

        An idle poll only reads: the write transaction is begun when a row looks due.
        """
        if not self.any_due(sessions, now=now, row_id=row_id):
            return []
        with writing(sessions) as session:
            return self.claim_in(session, lease_s=lease_s, limit=limit, now=now, row_id=row_id)

    # While working ---------------------------------------------------------------------------
    def renew(
        self,
        sessions: sessionmaker[Session],
        claims: Iterable[Claim],
        *,
        lease_s: float,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Extend the leases of ``claims`` to ``now + lease_s``; returns the claims lost."""
        now = now or utcnow()
        lost = []
        with writing(sessions) as session:
            for claim in claims:
                result = session.execute(
                    update(self.table)
                    .where(self.fenced(claim))
                    .values({self._lease: now + timedelta(seconds=lease_s)})
                    .execution_options(synchronize_session=False)
                )
                if not _rowcount(result):
                    lost.append(claim)
        return lost

    def ensure_held(self, session: Session, claim: Claim) -> None:
        """Lock the claimed row in the caller's write transaction, or raise :class:`LeaseLostError`.

        Call it in every transaction that writes the work's results, so a stale worker's
        writes are refused with the same token check as its completion.
        """
        found = session.scalar(
            select(self._id).where(self.fenced(claim)).with_for_update(of=self.table)
        )
        if found is None:
            raise LeaseLostError(
                f"{self.table.__tablename__} row {claim.id}: claim {claim.token} lost"
            )

    def heartbeat(
        self, sessions: sessionmaker[Session], claims: Sequence[Claim], *, lease_s: float
    ) -> Heartbeat:
        """A :class:`Heartbeat` keeping ``claims`` leased while the ``with`` block runs."""
        return Heartbeat(self, sessions, claims, lease_s=lease_s)

    # Settling --------------------------------------------------------------------------------
    def complete_in(
        self,
        session: Session,
        claim: Claim,
        *,
        now: datetime | None = None,
        values: dict[str, Any] | None = None,
    ) -> bool:
        """Make a claimed row done (with ``values``); False when the claim is stale."""
        now = now or utcnow()
        changes: dict[Any, Any] = {self._state: self.states.done, self._lease: None}
        if self._finished is not None:
            changes[self._column(self._finished)] = now
        changes.update({self._column(k): v for k, v in (values or {}).items()})
        result = session.execute(
            update(self.table)
            .where(self.fenced(claim))
            .values(changes)
            .execution_options(synchronize_session=False)
        )
        return bool(_rowcount(result))

    def complete(
        self,
        sessions: sessionmaker[Session],
        claim: Claim,
        *,
        now: datetime | None = None,
        values: dict[str, Any] | None = None,
    ) -> bool:
        """:meth:`complete_in`, in a transaction of its own."""
        with writing(sessions) as session:
            return self.complete_in(session, claim, now=now, values=values)

    def fail(
        self,
        sessions: sessionmaker[Session],
        claim: Claim,
        error: str,
        policy: RetryPolicy,
        *,
        permanent: bool = False,
        now: datetime | None = None,
        values: dict[str, Any] | None = None,
    ) -> StrEnum | None:
        """Record a failed attempt: pending again after the backoff, or dead when ``permanent``
        or out of attempts or age. Returns the new state, or None when the claim is stale."""
        now = now or utcnow()
        with writing(sessions) as session:
            columns = [
                self._column("attempts"),
                self._column("created_at"),
                self._column("retried_at"),
            ]
            if self._max_attempts is not None:
                columns.append(self._column(self._max_attempts))
            row = session.execute(
                select(*columns).where(self.fenced(claim)).with_for_update(of=self.table)
            ).first()
            if row is None:
                return None
            attempts, created_at, retried_at = int(row[0]), row[1], row[2]
            max_attempts = policy.max_attempts
            if max_attempts is None:
                max_attempts = int(row[3]) if self._max_attempts is not None else None
            age_s = (now - (retried_at or created_at)).total_seconds()
            exhausted = (max_attempts is not None and attempts >= max_attempts) or (
                policy.max_age_s is not None and age_s >= policy.max_age_s
            )
            changes: dict[Any, Any] = {self._lease: None}
            changes.update({self._column(k): v for k, v in (values or {}).items()})
            if exhausted and not permanent:
                error = f"gave up after {attempts} attempts: {error}"
            changes[self._column("last_error")] = error[:MAX_ERROR_LENGTH]
            if permanent or exhausted:
                state = self.states.dead
                if self._finished is not None:
                    changes[self._column(self._finished)] = now
            else:
                state = self.states.pending
                delay = backoff_delay(
                    max(attempts, 1), base_s=policy.backoff_base_s, max_s=policy.backoff_max_s
                )
                changes[self._due] = now + timedelta(seconds=delay)
            changes[self._state] = state
            result = session.execute(
                update(self.table)
                .where(self.fenced(claim))
                .values(changes)
                .execution_options(synchronize_session=False)
            )
            return state if _rowcount(result) else None

    def release(
        self,
        sessions: sessionmaker[Session],
        claim: Claim,
        reason: str,
        *,
        now: datetime | None = None,
    ) -> bool:
        """Put a claimed row back to pending, due now, without using up an attempt.

        For work that must wait for a cause outside it (see ``held``). The fencing token is
        not reused: the next claim gets a new one. False when the claim is stale.
        """
        now = now or utcnow()
        attempts = self._column("attempts")
        with writing(sessions) as session:
            result = session.execute(
                update(self.table)
                .where(self.fenced(claim))
                .values(
                    {
                        self._state: self.states.pending,
                        attempts: case((attempts > 0, attempts - 1), else_=0),
                        self._lease: None,
                        self._due: now,
                        self._column("last_error"): reason[:MAX_ERROR_LENGTH],
                    }
                )
                .execution_options(synchronize_session=False)
            )
            return bool(_rowcount(result))

    # Administration --------------------------------------------------------------------------
    def retry_dead(
        self,
        sessions: sessionmaker[Session],
        *where: ColumnElement[bool],
        now: datetime | None = None,
    ) -> list[int]:
        """Queue dead rows (those matching ``where``) again; returns their ids.

        A retried row starts afresh: no attempts used, due now, its age counted from
        ``retried_at``. ``created_at`` keeps when the work was first queued.
        """
        now = now or utcnow()
        changes: dict[Any, Any] = {
            self._state: self.states.pending,
            self._column("attempts"): 0,
            self._due: now,
            self._lease: None,
            self._column("retried_at"): now,
        }
        if self._finished is not None:
            changes[self._column(self._finished)] = None
        with writing(sessions) as session:
            ids = list(
                session.scalars(
                    select(self._id)
                    .where(self._state == self.states.dead, *where)
                    .with_for_update(of=self.table)
                )
            )
            if ids:
                session.execute(
                    update(self.table)
                    .where(self._id.in_(ids), self._state == self.states.dead)
                    .values(changes)
                    .execution_options(synchronize_session=False)
                )
            return ids

    def depths(self, sessions: sessionmaker[Session]) -> dict[str, int]:
        """Number of rows in each state (every state named, zero when empty)."""
        with reading(sessions) as session:
            rows = session.execute(select(self._state, func.count()).group_by(self._state)).all()
        depths = {
            state.value: 0
            for state in (
                self.states.pending,
                self.states.running,
                self.states.done,
                self.states.dead,
            )
        }
        depths.update({str(state): int(count) for state, count in rows})
        return depths


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


class Heartbeat:
    """Renews the leases of claimed rows every ``lease_s / 3`` on a thread, until the ``with``
    block ends.

    A renewal that finds a claim stale marks it lost (:attr:`lost`); the work should then stop,
    and its writes are refused anyway (:meth:`Queue.ensure_held`). A database error is logged
    and the next beat tries again: two beats fit in the lease.
    """

    def __init__(
        self,
        queue: Queue,
        sessions: sessionmaker[Session],
        claims: Sequence[Claim],
        *,
        lease_s: float,
    ) -> None:
        if lease_s <= 0:
            raise ValueError(f"the lease must be positive, got {lease_s}")
        self._queue = queue
        self._sessions = sessions
        self._claims = list(claims)
        self._lease_s = lease_s
        self.interval_s = lease_s / 3
        self._stop = threading.Event()
        self._lost = threading.Event()
        self.beats = 0
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{queue.table.__tablename__}", daemon=True
        )

    @property
    def lost(self) -> bool:
        """Whether a renewal found one of the claims taken by another worker or settled."""
        return self._lost.is_set()

    def __enter__(self) -> Heartbeat:
        if self._claims:
            self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        table = self._queue.table.__tablename__
        while self._claims and not self._stop.wait(self.interval_s):
            try:
                lost = self._queue.renew(self._sessions, self._claims, lease_s=self._lease_s)
            except SQLAlchemyError:
                log.exception("renewing the leases of %s rows failed; trying again", table)
                continue
            self.beats += 1
            if lost:
                self._lost.set()
                for claim in lost:
                    log.warning("%s row %d: lease lost (claim %d)", table, claim.id, claim.token)
                self._claims = [c for c in self._claims if c not in lost]

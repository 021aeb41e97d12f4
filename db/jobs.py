"""The job queue's queries: claim with a lease, complete, fail with backoff, recover leases.

Used by the in-process worker pool and by any distributed executor; the queue's state lives
only here, in the ``jobs`` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.base import utcnow
from db.models import Job, JobState, Study

#: Errors are stored truncated; they never contain patient data (callers pass type and reason).
MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job taken by a worker, with the attempt number it is running."""

    id: int
    study_id: int
    generation: int
    kind: str
    attempt: int


def claim_next(
    factory: sessionmaker[Session], *, lease_s: float, now: datetime | None = None
) -> ClaimedJob | None:
    """Take the oldest due job (pending, or running with an expired lease) and lease it.

    Jobs of a study with an unresolved patient identity conflict are not taken: they wait,
    pending, until the conflict is resolved.
    """
    now = now or utcnow()
    held = exists(
        select(Study.id).where(Study.id == Job.study_id, Study.identity_conflict.is_(True))
    )
    with factory() as session, session.begin():
        job = session.scalars(
            select(Job)
            .where(
                or_(
                    (Job.state == JobState.PENDING) & (Job.next_run_at <= now),
                    (Job.state == JobState.RUNNING) & (Job.lease_expires_at < now),
                ),
                ~held,
            )
            .order_by(Job.next_run_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if job is None:
            return None
        job.state = JobState.RUNNING
        job.attempts += 1
        job.started_at = now
        job.lease_expires_at = now + timedelta(seconds=lease_s)
        return ClaimedJob(job.id, job.study_id, job.generation, job.kind, job.attempts)


def complete(factory: sessionmaker[Session], job_id: int) -> None:
    """Mark a job done."""
    with factory() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state=JobState.DONE, finished_at=utcnow(), lease_expires_at=None)
        )


def hold(factory: sessionmaker[Session], job_id: int, reason: str) -> None:
    """Put a running job back to pending without using up an attempt.

    For a job that must not go on for now (its study's patient identity is in conflict):
    :func:`claim_next` leaves it alone until the cause is gone, then it runs again in full.
    """
    with factory() as session, session.begin():
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        job.state = JobState.PENDING
        job.attempts = max(0, job.attempts - 1)
        job.lease_expires_at = None
        job.next_run_at = utcnow()
        job.last_error = reason[:MAX_ERROR_LENGTH]


def backoff_delay(attempt: int, *, base_s: float, max_s: float) -> float:
    """Exponential backoff: ``base * 2**(attempt-1)``, capped at ``max_s``."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    return float(min(max_s, base_s * (2 ** min(attempt - 1, 32))))


def fail(
    factory: sessionmaker[Session],
    job_id: int,
    error: str,
    *,
    base_s: float,
    max_s: float,
    permanent: bool = False,
    now: datetime | None = None,
) -> JobState:
    """Record a failed attempt: retry later with backoff, or fail for good; returns the state."""
    now = now or utcnow()
    with factory() as session, session.begin():
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        job.last_error = error[:MAX_ERROR_LENGTH]
        job.lease_expires_at = None
        if permanent or job.attempts >= job.max_attempts:
            job.state = JobState.FAILED
            job.finished_at = now
        else:
            job.state = JobState.PENDING
            delay = backoff_delay(job.attempts, base_s=base_s, max_s=max_s)
            job.next_run_at = now + timedelta(seconds=delay)
        return job.state


def queue_depths(factory: sessionmaker[Session]) -> dict[str, int]:
    """Number of jobs in each state."""
    from sqlalchemy import func

    with factory() as session:
        rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    depths = {state.value: 0 for state in JobState}
    depths.update({str(state): int(count) for state, count in rows})
    return depths

"""The analysis job queue: the ``jobs`` table as a fenced :class:`db.queue.Queue`.

Used by the in-process worker pool and by any distributed executor; the queue's state lives
only in the ``jobs`` table. Every change a worker makes carries its claim's fencing token, so a
worker whose lease lapsed while another took the job can neither complete nor fail it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import writing
from db.models import Job, JobState, Study
from db.queue import (
    MAX_ERROR_LENGTH,
    Claim,
    Heartbeat,
    LeaseLostError,
    Queue,
    QueueStates,
    RetryPolicy,
    backoff_delay,
)

__all__ = [
    "JOBS",
    "MAX_ERROR_LENGTH",
    "ClaimedJob",
    "JobHeldError",
    "LeaseLostError",
    "PermanentJobError",
    "backoff_delay",
    "claim",
    "claim_next",
    "complete",
    "ensure_held",
    "fail",
    "heartbeat",
    "hold",
    "queue_depths",
    "retry_failed",
]


def _identity_conflict() -> ColumnElement[bool]:
    # Jobs of a study with an unresolved patient identity conflict wait, pending.
    return exists(
        select(Study.id).where(Study.id == Job.study_id, Study.identity_conflict.is_(True))
    )


#: The job queue: pending → running → done, or failed (its dead state) after ``max_attempts``.
JOBS = Queue(
    Job,
    QueueStates(JobState.PENDING, JobState.RUNNING, JobState.DONE, JobState.FAILED),
    due="next_run_at",
    started="started_at",
    finished="finished_at",
    max_attempts="max_attempts",
    held=_identity_conflict,
)


class PermanentJobError(Exception):
    """A job failure that a retry cannot fix: a step raises it, the executor fails the job at
    once with this reason (:func:`fail` with ``permanent=True``)."""


class JobHeldError(Exception):
    """The job must wait (its study's patient identity is in conflict): a step raises it, the
    executor puts it back to pending without using an attempt (:func:`hold`); it is taken again
    once the cause is resolved."""


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job taken by a worker: what to run, the attempt, and the claim's fencing token."""

    id: int
    study_id: int
    generation: int
    kind: str
    attempt: int
    token: int
    #: The instance of an image job (``JobKind.IMAGE``); None for a study's job.
    instance_id: int | None = None

    @property
    def claim(self) -> Claim:
        return Claim(self.id, self.token, self.attempt)


def _claim(
    factory: sessionmaker[Session], *, lease_s: float, now: datetime | None, job_id: int | None
) -> ClaimedJob | None:
    if not JOBS.any_due(factory, now=now, row_id=job_id):
        return None  # an idle poll does not take the write lock
    with writing(factory) as session:
        claims = JOBS.claim_in(session, lease_s=lease_s, now=now, row_id=job_id)
        if not claims:
            return None
        (taken,) = claims
        study_id, generation, kind, instance_id = session.execute(
            select(Job.study_id, Job.generation, Job.kind, Job.instance_id).where(
                Job.id == taken.id
            )
        ).one()
        return ClaimedJob(
            taken.id, study_id, generation, kind, taken.attempt, taken.token, instance_id
        )


def claim_next(
    factory: sessionmaker[Session], *, lease_s: float, now: datetime | None = None
) -> ClaimedJob | None:
    """Take the oldest due job (pending and due, or running with a lapsed lease) and lease it.

    Jobs of a study with an unresolved patient identity conflict are not taken: they wait,
    pending, until the conflict is resolved.
    """
    return _claim(factory, lease_s=lease_s, now=now, job_id=None)


def claim(
    factory: sessionmaker[Session], job_id: int, *, lease_s: float, now: datetime | None = None
) -> ClaimedJob | None:
    """Take one named job if it is due (for a message that carries only the job's id)."""
    return _claim(factory, lease_s=lease_s, now=now, job_id=job_id)


def heartbeat(factory: sessionmaker[Session], job: ClaimedJob, *, lease_s: float) -> Heartbeat:
    """Keep ``job`` leased while the ``with`` block runs (renewed every ``lease_s / 3``)."""
    return JOBS.heartbeat(factory, [job.claim], lease_s=lease_s)


def ensure_held(session: Session, job: ClaimedJob) -> None:
    """Raise :class:`LeaseLostError` unless ``job`` is still this claim's (locks its row)."""
    JOBS.ensure_held(session, job.claim)


def complete(factory: sessionmaker[Session], job: ClaimedJob) -> bool:
    """Mark a job done; False when the claim is stale (another worker has the job now)."""
    return JOBS.complete(factory, job.claim)


def hold(factory: sessionmaker[Session], job: ClaimedJob, reason: str) -> bool:
    """Put a running job back to pending without using up an attempt.

    For a job that must not go on for now (its study's patient identity is in conflict):
    :func:`claim_next` leaves it alone until the cause is gone, then it runs again in full.
    False when the claim is stale.
    """
    return JOBS.release(factory, job.claim, reason)


def fail(
    factory: sessionmaker[Session],
    job: ClaimedJob,
    error: str,
    *,
    base_s: float,
    max_s: float,
    permanent: bool = False,
    now: datetime | None = None,
) -> JobState | None:
    """Record a failed attempt: retry later with backoff, or fail for good.

    Returns the job's new state, or None when the claim is stale (nothing was changed).
    """
    state = JOBS.fail(
        factory,
        job.claim,
        error,
        RetryPolicy(backoff_base_s=base_s, backoff_max_s=max_s),
        permanent=permanent,
        now=now,
    )
    return None if state is None else JobState(state)


def retry_failed(factory: sessionmaker[Session], job_id: int | None = None) -> list[int]:
    """Queue failed jobs (one, or all) again, from their first attempt; returns their ids."""
    where = [] if job_id is None else [Job.id == job_id]
    return JOBS.retry_dead(factory, *where)


def queue_depths(factory: sessionmaker[Session]) -> dict[str, int]:
    """Number of jobs in each state."""
    return JOBS.depths(factory)

"""Study grouping: when a study is complete, and which arrived images to analyse before then.

A study is complete (:func:`complete_studies`) when either

- as many instances are stored as the sender announced in Number of Study Related Instances
  (0020,1208), when it gave that element; or
- no instance has arrived for the quiet period (``grouping.quiet_period_s``).

Completion creates a study job; an instance arriving later reopens the study (see ``ingest``)
and the next completion creates a new job for the new generation, whose results replace the
earlier ones (docs/ARCHITECTURE.md, "Study completion"). Before completion, each arrived
instance gets an image job (:func:`queue_arrived_instances`): it is classified and analysed
while the rest of the study is still arriving, so the study job finds its predictions cached.
All state is in the database, so a restart resumes where it stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from db.base import utcnow
from db.engine import reading, writing
from db.models import Eligibility, Instance, Job, JobKind, Study, StudyStatus

log = logging.getLogger(__name__)


def _announced_count_reached() -> ColumnElement[bool]:
    stored = select(func.count(Instance.id)).where(Instance.study_id == Study.id).scalar_subquery()
    return and_(Study.expected_instances.is_not(None), stored >= Study.expected_instances)


def complete_studies(
    factory: sessionmaker[Session],
    *,
    quiet_period_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> list[int]:
    """Mark complete studies complete and queue one job each; returns the new job ids.

    Complete: the announced number of instances is stored, or the quiet period has passed
    since the last arrival. A study with an unresolved patient identity conflict is held: it
    stays receiving (or reopened) until an admin resolves the conflict, and then completes on
    the next pass.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=quiet_period_s)
    created: list[int] = []
    ready = (
        Study.status.in_([StudyStatus.RECEIVING, StudyStatus.REOPENED]),
        or_(Study.last_received_at <= cutoff, _announced_count_reached()),
        Study.identity_conflict.is_(False),
    )
    # Look first without the write lock: most polls find nothing, and ingest is not kept waiting.
    with reading(factory) as session:
        if session.scalar(select(Study.id).where(*ready).limit(1)) is None:
            return created
    with writing(factory) as session:
        studies = session.scalars(
            select(Study)
            .where(*ready)
            .order_by(Study.last_received_at)
            .with_for_update(skip_locked=True)
        ).all()
        for study in studies:
            study.status = StudyStatus.COMPLETE
            study.completed_at = now
            study.generation += 1
            job = Job(
                study_id=study.id,
                kind=JobKind.STUDY.value,
                generation=study.generation,
                max_attempts=max_attempts,
                next_run_at=now,
                created_at=now,
            )
            session.add(job)
            session.flush()
            created.append(job.id)
    for job_id in created:
        log.info("study complete, job %d queued", job_id)
    return created


def complete_quiet_studies(
    factory: sessionmaker[Session],
    *,
    quiet_period_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> list[int]:
    """The name this pass had when the quiet period was its only rule (:func:`complete_studies`)."""
    return complete_studies(
        factory, quiet_period_s=quiet_period_s, max_attempts=max_attempts, now=now
    )


def _awaiting_image_job() -> tuple[ColumnElement[bool], ...]:
    # Not yet classified, and no image job since the instance's current copy was recorded
    # (a copy replaced under duplicate_policy "replace" gets a job of its own).
    queued = exists(
        select(Job.id).where(
            Job.instance_id == Instance.id,
            Job.kind == JobKind.IMAGE.value,
            Job.created_at >= Instance.received_at,
        )
    )
    return (Instance.eligibility == Eligibility.PENDING, ~queued)


def queue_arrived_instances(
    factory: sessionmaker[Session],
    *,
    max_attempts: int,
    now: datetime | None = None,
    limit: int = 500,
) -> list[int]:
    """Queue an image job for each arrived, not yet classified instance; returns the job ids.

    Runs beside completion (never in the C-STORE handler): the image jobs analyse a study's
    images while it is still arriving. Losing one costs only time: the study job analyses
    whatever has no cached prediction.
    """
    now = now or utcnow()
    waiting = _awaiting_image_job()
    with reading(factory) as session:
        if session.scalar(select(Instance.id).where(*waiting).limit(1)) is None:
            return []
    created: list[int] = []
    with writing(factory) as session:
        rows = session.execute(
            select(Instance.id, Instance.study_id, Study.generation, Instance.received_at)
            .join(Study, Study.id == Instance.study_id)
            .where(*waiting)
            .order_by(Instance.id)
            .limit(limit)
            # Two nodes on one PostgreSQL database: each instance is queued by one of them.
            .with_for_update(skip_locked=True, of=Instance)
        ).all()
        if rows:
            # The lock was taken after the statement's snapshot: another node may have queued
            # one of these instances and committed in between (it held the lock until then).
            # A new statement sees that commit; what still waits is queued here, once.
            still = set(
                session.scalars(
                    select(Instance.id).where(Instance.id.in_([r[0] for r in rows]), *waiting)
                )
            )
            rows = [row for row in rows if row[0] in still]
        for instance_id, study_id, generation, received_at in rows:
            job = Job(
                study_id=study_id,
                kind=JobKind.IMAGE.value,
                instance_id=instance_id,
                generation=generation,
                max_attempts=max_attempts,
                next_run_at=now,
                # Never before the copy it analyses was recorded: an instance stored after
                # ``now`` was taken would otherwise still look unqueued and be queued twice.
                created_at=max(now, received_at),
            )
            session.add(job)
            session.flush()
            created.append(job.id)
    if created:
        log.debug("%d image jobs queued", len(created))
    return created


class GroupingTimer:
    """Runs :func:`queue_arrived_instances` (when enabled) and :func:`complete_studies` every
    poll interval in a background thread."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        quiet_period_s: float,
        poll_interval_s: float,
        max_attempts: int,
        on_jobs: Callable[[list[int]], None] | None = None,
        analyse_on_arrival: bool = False,
    ) -> None:
        self._factory = factory
        self._quiet = quiet_period_s
        self._interval = poll_interval_s
        self._max_attempts = max_attempts
        self._on_jobs = on_jobs
        self._analyse_on_arrival = analyse_on_arrival
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grouping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def run_once(self) -> list[int]:
        """One pass: image jobs for arrivals, then completions; returns the new job ids."""
        jobs: list[int] = []
        if self._analyse_on_arrival:
            jobs += queue_arrived_instances(self._factory, max_attempts=self._max_attempts)
        jobs += complete_studies(
            self._factory, quiet_period_s=self._quiet, max_attempts=self._max_attempts
        )
        if jobs and self._on_jobs is not None:
            self._on_jobs(jobs)
        return jobs

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("study grouping pass failed; retrying")
            self._stop.wait(self._interval)

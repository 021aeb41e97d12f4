"""Study grouping: a study is complete once no instance has arrived for the quiet period.

Completion creates a job; an instance arriving later reopens the study (see ``ingest``) and the
next completion creates a new job for the new generation. All state is in the database, so a
restart resumes where it stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.base import utcnow
from db.engine import reading, writing
from db.models import Job, Study, StudyStatus

log = logging.getLogger(__name__)


def complete_quiet_studies(
    factory: sessionmaker[Session],
    *,
    quiet_period_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> list[int]:
    """Mark quiet studies complete and queue one job each; returns the new job ids.

    A study with an unresolved patient identity conflict is held: it stays receiving (or
    reopened) until an admin resolves the conflict, and then completes on the next pass.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=quiet_period_s)
    created: list[int] = []
    quiet = (
        Study.status.in_([StudyStatus.RECEIVING, StudyStatus.REOPENED]),
        Study.last_received_at <= cutoff,
        Study.identity_conflict.is_(False),
    )
    # Look first without the write lock: most polls find nothing, and ingest is not kept waiting.
    with reading(factory) as session:
        if session.scalar(select(Study.id).where(*quiet).limit(1)) is None:
            return created
    with writing(factory) as session:
        studies = session.scalars(
            select(Study)
            .where(*quiet)
            .order_by(Study.last_received_at)
            .with_for_update(skip_locked=True)
        ).all()
        for study in studies:
            study.status = StudyStatus.COMPLETE
            study.completed_at = now
            study.generation += 1
            job = Job(
                study_id=study.id,
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


class GroupingTimer:
    """Runs :func:`complete_quiet_studies` every poll interval in a background thread."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        quiet_period_s: float,
        poll_interval_s: float,
        max_attempts: int,
        on_jobs: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._factory = factory
        self._quiet = quiet_period_s
        self._interval = poll_interval_s
        self._max_attempts = max_attempts
        self._on_jobs = on_jobs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grouping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = complete_quiet_studies(
                    self._factory, quiet_period_s=self._quiet, max_attempts=self._max_attempts
                )
                if jobs and self._on_jobs is not None:
                    self._on_jobs(jobs)
            except Exception:
                log.exception("study grouping pass failed; retrying")
            self._stop.wait(self._interval)

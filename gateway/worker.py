"""Job executors: the interface the service uses, and the in-process worker pool.

The pipeline is a plain callable ``(ClaimedJob) -> None``; an executor decides where it runs.
:class:`InProcessExecutor` runs it on threads of this process; a distributed executor (Celery on
RabbitMQ) would claim the same rows and call the same callable in worker processes, so swapping
executors never touches the pipeline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from config.settings import JobSettings
from db import jobs
from db.jobs import ClaimedJob
from db.models import JobState

log = logging.getLogger(__name__)

JobRunner = Callable[[ClaimedJob], None]


class PermanentJobError(Exception):
    """A job failure that a retry cannot fix (the job fails at once, with this reason)."""


class JobHeldError(Exception):
    """The job must wait (its study's patient identity is in conflict): pending again, no
    attempt used; it is taken again once the cause is resolved."""


class Executor(Protocol):
    """Runs queued jobs until stopped."""

    def start(self) -> None: ...

    def wake(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...


def run_one(factory: sessionmaker[Session], runner: JobRunner, settings: JobSettings) -> bool:
    """Claim one due job and run it; returns whether a job was found.

    Success marks the job done; :class:`PermanentJobError` fails it at once; any other exception
    is a failed attempt, retried with backoff until ``max_attempts``. The recorded error is the
    exception's type and message, which our code keeps free of patient data.
    """
    job = jobs.claim_next(factory, lease_s=settings.lease_s)
    if job is None:
        return False
    try:
        runner(job)
    except JobHeldError as exc:
        jobs.hold(factory, job.id, f"JobHeldError: {exc}")
        log.warning("job %d held: %s", job.id, exc)
    except PermanentJobError as exc:
        jobs.fail(factory, job.id, f"PermanentJobError: {exc}", base_s=0, max_s=0, permanent=True)
        log.error("job %d failed permanently: %s", job.id, exc)
    except Exception as exc:
        state = jobs.fail(
            factory,
            job.id,
            f"{type(exc).__name__}: {exc}",
            base_s=settings.backoff_base_s,
            max_s=settings.backoff_max_s,
        )
        if state is JobState.FAILED:
            log.error(
                "job %d failed after %d attempts: %s", job.id, job.attempt, type(exc).__name__
            )
        else:
            log.warning("job %d attempt %d failed, will retry: %s", job.id, job.attempt, exc)
    else:
        jobs.complete(factory, job.id)
        log.info("job %d done", job.id)
    return True


class InProcessExecutor:
    """A pool of worker threads polling the jobs table."""

    def __init__(
        self, factory: sessionmaker[Session], runner: JobRunner, settings: JobSettings
    ) -> None:
        self._factory = factory
        self._runner = runner
        self._settings = settings
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"job-worker-{i}", daemon=True)
            for i in range(settings.workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                found = run_one(self._factory, self._runner, self._settings)
            except Exception:
                log.exception("job queue unavailable; retrying")
                found = False
            if not found:
                self._wake.wait(self._settings.poll_interval_s)
                self._wake.clear()

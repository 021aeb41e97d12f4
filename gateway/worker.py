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
from db.jobs import ClaimedJob, JobHeldError, LeaseLostError, PermanentJobError
from db.models import JobState
from dicom_node.activity import IngestActivity

log = logging.getLogger(__name__)

JobRunner = Callable[[ClaimedJob], None]


class Executor(Protocol):
    """Runs queued jobs until stopped."""

    def start(self) -> None: ...

    def wake(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...


def run_one(
    factory: sessionmaker[Session],
    runner: JobRunner,
    settings: JobSettings,
    *,
    job_id: int | None = None,
) -> bool:
    """Claim one due job (the oldest, or ``job_id`` when a message named it) and run it,
    keeping its lease alive; returns whether a job was claimed.

    While the runner works, a heartbeat thread renews the lease every ``lease_s / 3``; a job
    whose worker dies is retaken once the lease lapses. Success marks the job done;
    :class:`PermanentJobError` fails it at once; any other exception is a failed attempt, retried
    with backoff until ``max_attempts``. Every change carries the claim's fencing token: when
    another worker has taken the job meanwhile (:class:`LeaseLostError`), this one changes nothing.
    The recorded error is the exception's type and message, which our code keeps free of
    patient data.
    """
    if job_id is None:
        job = jobs.claim_next(factory, lease_s=settings.lease_s)
    else:
        job = jobs.claim(factory, job_id, lease_s=settings.lease_s)
    if job is None:
        return False
    level = logging.INFO
    with jobs.heartbeat(factory, job, lease_s=settings.lease_s):
        try:
            runner(job)
        except LeaseLostError as exc:
            log.warning("job %d attempt %d abandoned: %s", job.id, job.attempt, exc)
            return True
        except JobHeldError as exc:
            level = logging.WARNING
            held = jobs.hold(factory, job, f"JobHeldError: {exc}")
            outcome = f"held: {exc}" if held else None
        except PermanentJobError as exc:
            level = logging.ERROR
            reason = f"PermanentJobError: {exc}"
            state = jobs.fail(factory, job, reason, base_s=0, max_s=0, permanent=True)
            outcome = None if state is None else f"failed permanently: {exc}"
        except Exception as exc:
            state = jobs.fail(
                factory,
                job,
                f"{type(exc).__name__}: {exc}",
                base_s=settings.backoff_base_s,
                max_s=settings.backoff_max_s,
            )
            level = logging.ERROR if state is JobState.FAILED else logging.WARNING
            outcome = None
            if state is JobState.FAILED:
                outcome = f"failed after {job.attempt} attempts: {type(exc).__name__}"
            elif state is not None:
                outcome = f"failed, will retry: {exc}"
        else:
            outcome = "done" if jobs.complete(factory, job) else None
    if outcome is None:
        log.warning("job %d attempt %d: lease lost, outcome not recorded", job.id, job.attempt)
    else:
        log.log(level, "job %d attempt %d %s", job.id, job.attempt, outcome)
    return True


class InProcessExecutor:
    """A pool of worker threads polling the jobs table.

    With ``ingest``, a worker starts no new job while this process's DICOM node is receiving
    a burst of data (:class:`~dicom_node.activity.IngestActivity`): analysis on arrival would
    otherwise take the CPUs the C-STOREs need. A job already running is not interrupted.
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        runner: JobRunner,
        settings: JobSettings,
        ingest: IngestActivity | None = None,
    ) -> None:
        self._factory = factory
        self._runner = runner
        self._settings = settings
        self._ingest = ingest
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
            if self._hold_back():
                continue
            try:
                found = run_one(self._factory, self._runner, self._settings)
            except Exception:
                log.exception("job queue unavailable; retrying")
                found = False
            if not found:
                self._wake.wait(self._settings.poll_interval_s)
                self._wake.clear()

    def _hold_back(self) -> bool:
        """Wait while the DICOM node takes a burst of data; whether this loop should look again."""
        if self._ingest is None:
            return False
        wait_s = self._ingest.hold_back_s()
        if wait_s <= 0:
            return False
        self._stop.wait(wait_s)
        return True

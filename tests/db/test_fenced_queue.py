"""The fenced queue (db.queue) with several workers, on SQLite and on PostgreSQL.

Fencing: a worker whose lease lapsed and whose job was claimed again cannot complete, fail or
write for it. Heartbeat: a slow job keeps its short lease; a job whose worker died is retaken
once. Claims: two workers (threads, or processes) never hold one row at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import JobSettings, OutboxSettings
from db import jobs
from db.base import utcnow
from db.engine import make_engine, make_session_factory, reading, writing
from db.jobs import ClaimedJob, LeaseLostError
from db.migrate import upgrade
from db.models import Job, JobState, Study
from db.results import OutboxEntry, OutboxState
from dicom_node.outbox import DeliveryOutcome, claim_due, record_outcome, retry_dead_letter
from gateway.worker import InProcessExecutor
from tests.helpers.results_db import add_results, open_results_db

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def add_jobs(sessions: sessionmaker[Session], count: int, *, max_attempts: int = 3) -> list[int]:
    """``count`` due jobs, one per study."""
    now = utcnow()
    ids = []
    with writing(sessions) as session:
        for number in range(count):
            study = Study(study_instance_uid=f"1.2.826.0.1.3680043.10.9999.{number + 1}")
            session.add(study)
            session.flush()
            job = Job(
                study_id=study.id,
                generation=1,
                max_attempts=max_attempts,
                next_run_at=now,
                created_at=now,
            )
            session.add(job)
            session.flush()
            ids.append(job.id)
    return ids


def job_row(sessions: sessionmaker[Session], job_id: int) -> Job:
    with reading(sessions) as session:
        return session.get_one(Job, job_id)


def wait_until(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# Fencing --------------------------------------------------------------------------------------
def test_a_stale_workers_changes_are_refused(sessions: sessionmaker[Session]) -> None:
    (job_id,) = add_jobs(sessions, 1)
    now = utcnow()
    stale = jobs.claim_next(sessions, lease_s=60, now=now)
    assert stale is not None
    assert jobs.claim_next(sessions, lease_s=60, now=now + timedelta(seconds=59)) is None
    # The stale worker stopped renewing; after its lease another worker takes the job.
    current = jobs.claim_next(sessions, lease_s=60, now=now + timedelta(seconds=61))
    assert current is not None
    assert (current.id, current.attempt) == (job_id, 2)
    assert current.token > stale.token

    assert jobs.complete(sessions, stale) is False
    assert jobs.fail(sessions, stale, "late", base_s=0, max_s=0) is None
    assert jobs.hold(sessions, stale, "late") is False
    with pytest.raises(LeaseLostError), writing(sessions) as session:
        jobs.ensure_held(session, stale)
    row = job_row(sessions, job_id)
    assert (row.state, row.lease_token, row.last_error) == (JobState.RUNNING, current.token, None)

    assert jobs.complete(sessions, current) is True
    assert jobs.complete(sessions, current) is False  # settled: not running any more
    assert job_row(sessions, job_id).state is JobState.DONE


def test_a_held_job_gets_a_new_token_when_claimed_again(sessions: sessionmaker[Session]) -> None:
    add_jobs(sessions, 1)
    first = jobs.claim_next(sessions, lease_s=60)
    assert first is not None
    assert jobs.hold(sessions, first, "identity conflict")
    second = jobs.claim_next(sessions, lease_s=60)
    assert second is not None
    # The held attempt was given back, but the token is never reused.
    assert (second.attempt, second.token) == (first.attempt, first.token + 1)
    assert jobs.complete(sessions, first) is False
    assert jobs.complete(sessions, second) is True


def test_a_stale_sender_cannot_overwrite_the_current_senders_outcome(
    database_url: str, tmp_path: Path
) -> None:
    db = open_results_db(database_url, tmp_path / "storage")
    try:
        add_results(db, 1, ["pacs"])
        settings = OutboxSettings(max_attempts=5)
        now = utcnow()
        (stale,) = claim_due(db.sessions, limit=1, lease_s=1, now=now)
        (current,) = claim_due(db.sessions, limit=1, lease_s=60, now=now + timedelta(seconds=2))
        # The stale sender's outcome arrives while the current one is still sending.
        state = record_outcome(
            db.sessions, stale, DeliveryOutcome.DEAD_LETTER, settings, error="late refusal"
        )
        assert state is OutboxState.SENDING
        with reading(db.sessions) as session:
            row = session.get_one(OutboxEntry, current.outbox_id)
            assert (row.state, row.last_error, row.lease_token) == (
                OutboxState.SENDING,
                None,
                current.token,
            )
        state = record_outcome(db.sessions, current, DeliveryOutcome.DELIVERED, settings, status=0)
        assert state is OutboxState.SENT
    finally:
        db.engine.dispose()


# Retry fields ---------------------------------------------------------------------------------
def test_manual_retry_keeps_created_at_and_counts_age_from_the_retry(
    database_url: str, tmp_path: Path
) -> None:
    db = open_results_db(database_url, tmp_path / "storage")
    try:
        add_results(db, 1, ["pacs"])
        settings = OutboxSettings(max_attempts=10, max_age_s=3600, backoff_base_s=0)
        with reading(db.sessions) as session:
            created = session.scalars(select(OutboxEntry)).one().created_at
        much_later = created + timedelta(hours=2)
        (delivery,) = claim_due(db.sessions, limit=1, lease_s=60, now=much_later)
        state = record_outcome(
            db.sessions, delivery, DeliveryOutcome.RETRY, settings, error="down", now=much_later
        )
        assert state is OutboxState.DEAD_LETTER  # older than max_age_s
        assert retry_dead_letter(db.sessions, delivery.outbox_id)
        with reading(db.sessions) as session:
            row = session.get_one(OutboxEntry, delivery.outbox_id)
            assert row.created_at == created
            assert row.retried_at is not None
            assert row.retried_at > created
            assert (row.state, row.attempts) == (OutboxState.PENDING, 0)
        # A transient failure after the retry is retried again: the age counts from the retry.
        (again,) = claim_due(db.sessions, limit=1, lease_s=60)
        state = record_outcome(db.sessions, again, DeliveryOutcome.RETRY, settings, error="down")
        assert state is OutboxState.PENDING
    finally:
        db.engine.dispose()


def test_failed_job_is_retried_by_hand_from_its_first_attempt(
    sessions: sessionmaker[Session],
) -> None:
    (job_id,) = add_jobs(sessions, 1, max_attempts=1)
    claimed = jobs.claim_next(sessions, lease_s=60)
    assert claimed is not None
    assert jobs.fail(sessions, claimed, "RuntimeError: x", base_s=0, max_s=0) is JobState.FAILED
    failed = job_row(sessions, job_id)
    assert failed.last_error == "gave up after 1 attempts: RuntimeError: x"
    assert jobs.retry_failed(sessions, job_id) == [job_id]
    assert jobs.retry_failed(sessions, job_id) == []  # no longer failed
    row = job_row(sessions, job_id)
    assert (row.state, row.attempts, row.finished_at) == (JobState.PENDING, 0, None)
    assert row.created_at == failed.created_at
    assert row.retried_at is not None
    again = jobs.claim(sessions, job_id, lease_s=60)
    assert again is not None
    assert again.attempt == 1


def test_reading_sessions_refuse_to_write(sessions: sessionmaker[Session]) -> None:
    (job_id,) = add_jobs(sessions, 1)
    with pytest.raises(DBAPIError, match=r"(?i)read.?only"), reading(sessions) as session:
        session.execute(update(Job).values(last_error="written by a reader"))
    assert job_row(sessions, job_id).last_error is None


# Heartbeat ------------------------------------------------------------------------------------
def test_heartbeat_renews_the_lease_until_the_work_ends(sessions: sessionmaker[Session]) -> None:
    add_jobs(sessions, 1)
    lease_s = 0.6
    claimed = jobs.claim_next(sessions, lease_s=lease_s)
    assert claimed is not None
    first_expiry = job_row(sessions, claimed.id).lease_expires_at
    assert first_expiry is not None
    with jobs.heartbeat(sessions, claimed, lease_s=lease_s) as beat:
        wait_until(lambda: beat.beats >= 4, 10, "four heartbeats")
        renewed = job_row(sessions, claimed.id).lease_expires_at
        assert renewed is not None
        assert renewed > first_expiry + timedelta(seconds=lease_s)
        # Past the first lease, nobody can take the job while the heartbeat runs.
        assert jobs.claim_next(sessions, lease_s=lease_s) is None
        assert not beat.lost
    beats = beat.beats
    wait_until(lambda: jobs.claim_next(sessions, lease_s=60) is not None, 10, "lease to lapse")
    assert beat.beats == beats  # stopped with the work


def test_heartbeat_notices_a_lost_lease(sessions: sessionmaker[Session]) -> None:
    add_jobs(sessions, 1)
    stale = jobs.claim_next(sessions, lease_s=0.3)
    assert stale is not None
    with jobs.heartbeat(sessions, stale, lease_s=0.3) as beat:
        with writing(sessions) as session:  # as if the worker had stalled past its lease
            session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        assert jobs.claim_next(sessions, lease_s=60) is not None
        wait_until(lambda: beat.lost, 10, "the heartbeat to notice")


# Several workers ------------------------------------------------------------------------------
class Tracker:
    """Records which jobs run, how often, and whether one ever ran on two workers at once."""

    def __init__(self, work_s: float) -> None:
        self.work_s = work_s
        self._lock = threading.Lock()
        self._active: Counter[int] = Counter()
        self.runs: defaultdict[int, list[int]] = defaultdict(list)
        self.overlaps: list[int] = []

    def __call__(self, job: ClaimedJob) -> None:
        with self._lock:
            self._active[job.id] += 1
            if self._active[job.id] > 1:
                self.overlaps.append(job.id)
            self.runs[job.id].append(job.attempt)
        try:
            threading.Event().wait(self.work_s)  # the work itself: longer than the lease
        finally:
            with self._lock:
                self._active[job.id] -= 1


def test_two_workers_never_run_one_job_at_the_same_time(
    sessions: sessionmaker[Session],
) -> None:
    ids = add_jobs(sessions, 4)
    # Each job takes about three leases: only the heartbeat keeps another worker off it.
    settings = JobSettings(workers=2, lease_s=1.0, poll_interval_s=0.05)
    tracker = Tracker(work_s=3.0)
    executors = [InProcessExecutor(sessions, tracker, settings) for _ in range(2)]
    for executor in executors:
        executor.start()
    try:
        wait_until(
            lambda: jobs.queue_depths(sessions)["done"] == len(ids), 60, "every job to be done"
        )
    finally:
        for executor in executors:
            executor.stop()
    assert tracker.overlaps == []
    assert dict(tracker.runs) == {job_id: [1] for job_id in ids}


def _start_worker_process(database_url: str, lease_s: float) -> subprocess.Popen[str]:
    """A worker in a process of its own that claims one job, says which, and works forever."""
    code = (
        "import sys, threading\n"
        "from config.settings import JobSettings\n"
        "from db.engine import make_engine, make_session_factory\n"
        "from gateway.worker import run_one\n"
        "sessions = make_session_factory(make_engine(sys.argv[1]))\n"
        "def work(job):\n"
        "    print(job.id, job.attempt, flush=True)\n"
        "    threading.Event().wait()\n"
        "run_one(sessions, work, JobSettings(lease_s=float(sys.argv[2])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, database_url, str(lease_s)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )


def test_a_job_whose_worker_died_is_run_again_once_after_its_lease(
    sessions: sessionmaker[Session], database_url: str
) -> None:
    (job_id,) = add_jobs(sessions, 1)
    lease_s = 1.5
    worker = _start_worker_process(database_url, lease_s)
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().split() == [str(job_id), "1"]
        first_lease = job_row(sessions, job_id).lease_expires_at
        assert first_lease is not None
        # Alive, the worker keeps its job past the lease: its heartbeat renews it.
        wait_until(
            lambda: job_row(sessions, job_id).lease_expires_at > first_lease,  # type: ignore[operator]
            20,
            "the worker's first renewal",
        )
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    killed_at = utcnow()
    lease_end = job_row(sessions, job_id).lease_expires_at
    assert lease_end is not None
    assert lease_end <= killed_at + timedelta(seconds=lease_s)

    tracker = Tracker(work_s=0.0)
    executor = InProcessExecutor(
        sessions, tracker, JobSettings(workers=2, lease_s=lease_s, poll_interval_s=0.05)
    )
    executor.start()
    try:
        wait_until(lambda: job_row(sessions, job_id).state is JobState.DONE, 30, "the re-run")
    finally:
        executor.stop()
    row = job_row(sessions, job_id)
    assert dict(tracker.runs) == {job_id: [2]}  # once, as its second attempt
    assert row.finished_at is not None
    assert row.finished_at >= lease_end


CLAIMER = (
    "import sys\n"
    "from db import jobs\n"
    "from db.engine import make_engine, make_session_factory\n"
    "sessions = make_session_factory(make_engine(sys.argv[1]))\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "while (job := jobs.claim_next(sessions, lease_s=600)) is not None:\n"
    "    print(job.id, flush=True)\n"
)


def test_processes_claiming_together_take_each_job_once(
    sessions: sessionmaker[Session], database_url: str
) -> None:
    ids = add_jobs(sessions, 40)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, database_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        for _ in range(3)
    ]
    outputs = []
    for claimer in claimers:
        assert claimer.stdout is not None
        assert claimer.stdout.readline().strip() == "ready"
    for claimer in claimers:  # all imported: start them together
        assert claimer.stdin is not None
        claimer.stdin.write("go\n")
        claimer.stdin.flush()
    for claimer in claimers:
        out, _ = claimer.communicate(timeout=120)
        assert claimer.returncode == 0
        outputs.append([int(line) for line in out.split()])
    claimed = [job_id for output in outputs for job_id in output]
    assert sorted(claimed) == ids  # every job, none twice
    assert jobs.queue_depths(sessions)["running"] == len(ids)

"""Job workers in the node's process start no new job while a burst of C-STOREs arrives.

Measured reason (docs/PERFORMANCE.md): with analysis on arrival competing for the same two
CPUs, durable ingest fell to 0.39x the disk's rate; yielding to the burst restores it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from config.settings import JobSettings
from db import jobs
from db.base import utcnow
from db.engine import make_engine, make_session_factory, writing
from db.jobs import ClaimedJob
from db.migrate import upgrade
from db.models import Job, Study
from dicom_node.activity import IngestActivity
from gateway.service import Service
from gateway.worker import InProcessExecutor
from tests.dicom_node.test_scp import small_dx, store_datasets
from tests.helpers.node import make_settings


class Clock:
    """A clock the test moves by hand; counts how often it is read."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0
        self.read = threading.Condition()

    def __call__(self) -> float:
        with self.read:
            self.reads += 1
            self.read.notify_all()
            return self.now


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def add_job(sessions: sessionmaker[Session]) -> int:
    now = utcnow()
    with writing(sessions) as session:
        study = Study(study_instance_uid="1.2.826.0.1.3680043.10.9999.1")
        session.add(study)
        session.flush()
        job = Job(study_id=study.id, generation=1, max_attempts=3, next_run_at=now, created_at=now)
        session.add(job)
        session.flush()
        return job.id


def recording_runner() -> tuple[Callable[[ClaimedJob], None], list[int], threading.Event]:
    ran: list[int] = []
    finished = threading.Event()

    def runner(job: ClaimedJob) -> None:
        ran.append(job.id)
        finished.set()

    return runner, ran, finished


def test_worker_waits_out_a_burst_then_runs_the_job(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions)
    clock = Clock()
    activity = IngestActivity(quiet_s=0.02, max_yield_s=3600.0, clock=clock)
    activity.touch()  # data arrives, and the clock stands still: a burst that does not end
    runner, ran, finished = recording_runner()
    executor = InProcessExecutor(sessions, runner, JobSettings(poll_interval_s=0.05), activity)
    executor.start()
    try:
        with clock.read:  # the worker has asked, and been told to wait, several times
            assert clock.read.wait_for(lambda: clock.reads >= 8, timeout=30)
        assert ran == []
        assert jobs.queue_depths(sessions)["pending"] == 1
        with clock.read:
            clock.now += 1.0  # the burst is over
        assert finished.wait(30), "the job did not run after the burst"
    finally:
        executor.stop()
    assert ran == [job_id]


def test_past_the_cap_the_worker_shares_the_cpus(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions)
    clock = Clock()
    activity = IngestActivity(quiet_s=0.25, max_yield_s=10.0, clock=clock)
    for _ in range(200):  # data every 0.1 s for 20 s: one burst, past its 10 s cap
        activity.touch()
        clock.now += 0.1
    activity.touch()
    runner, ran, finished = recording_runner()
    executor = InProcessExecutor(sessions, runner, JobSettings(poll_interval_s=0.05), activity)
    executor.start()
    try:
        assert finished.wait(30), "the job waited although the burst had passed its cap"
    finally:
        executor.stop()
    assert ran == [job_id]


def test_the_node_tells_the_workers_of_received_data(tmp_path: Path) -> None:
    service = Service(
        make_settings(tmp_path / "home", jobs={"yield_to_ingest_s": 3600, "yield_max_s": 3600})
    )
    service.start(dicom=True, worker=True)
    try:
        ingest = service.ingest
        assert ingest is not None
        assert ingest.hold_back_s() == 0.0
        assert store_datasets(service.dicom_port, [small_dx()]) == [0]
        assert ingest.hold_back_s() > 3000  # touched by the C-STORE's data just now
    finally:
        service.stop()


def test_no_yielding_when_switched_off_or_without_workers_here(tmp_path: Path) -> None:
    off = Service(make_settings(tmp_path / "off", jobs={"yield_to_ingest_s": 0}))
    node_only = Service(make_settings(tmp_path / "node"))
    off.start(dicom=True, worker=True)
    node_only.start(dicom=True, worker=False)
    try:
        assert off.ingest is None
        assert node_only.ingest is None
    finally:
        off.stop()
        node_only.stop()

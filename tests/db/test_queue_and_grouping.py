"""Grouping, the job queue and migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from config.settings import DuplicatePolicy, JobSettings
from db import jobs
from db.base import utcnow
from db.engine import make_engine, make_session_factory
from db.jobs import PermanentJobError
from db.migrate import current_revisions, upgrade
from db.models import Job, JobKind, JobState, Study, StudyStatus
from dicom_node.grouping import complete_quiet_studies, complete_studies, queue_arrived_instances
from dicom_node.ingest import InstanceHeader, record_instance
from dicom_node.storage import InstanceStore, StoredDigest
from gateway.worker import run_one


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def header(study: str, sop: str, announced: int | None = None) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=study + ".1",
        patient_id="P1",
        patient_name="TEST^PATIENT",
        accession_number=None,
        study_date="20260101",
        study_description=None,
        modality="CR",
        body_part_examined="HAND",
        series_number=1,
        instance_number=1,
        study_related_instances=announced,
    )


def receive(
    sessions: sessionmaker[Session],
    store: InstanceStore,
    study: str,
    sop: str,
    announced: int | None = None,
) -> None:
    tmp = store.tmp_dir / f"{sop}.part"
    tmp.write_bytes(sop.encode())
    record_instance(
        sessions,
        store,
        header(study, sop, announced),
        tmp,
        StoredDigest(sop.ljust(64, "0")[:64], len(sop)),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="PACS",
        duplicate_policy=DuplicatePolicy.KEEP_FIRST,
    )


def test_migrations_create_every_table_and_are_idempotent(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    upgrade(engine)  # a second run changes nothing
    assert current_revisions(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"studies", "series", "instances", "jobs", "image_predictions"} <= tables
    engine.dispose()


def test_study_completes_after_quiet_period_and_reopens(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store = InstanceStore(tmp_path / "storage")
    receive(sessions, store, "1.2.3", "1.2.3.1")
    receive(sessions, store, "1.2.3", "1.2.3.2")
    now = utcnow()
    # Not yet quiet: nothing happens.
    assert complete_quiet_studies(sessions, quiet_period_s=10, max_attempts=3, now=now) == []
    later = now + timedelta(seconds=11)
    (first_job,) = complete_quiet_studies(sessions, quiet_period_s=10, max_attempts=3, now=later)
    assert complete_quiet_studies(sessions, quiet_period_s=10, max_attempts=3, now=later) == []
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.status is StudyStatus.COMPLETE
        assert study.generation == 1

    # A late instance reopens the study; the next completion makes a second job.
    receive(sessions, store, "1.2.3", "1.2.3.3")
    with sessions() as session:
        assert session.scalars(select(Study)).one().status is StudyStatus.REOPENED
    much_later = utcnow() + timedelta(seconds=11)
    (second_job,) = complete_quiet_studies(
        sessions, quiet_period_s=10, max_attempts=3, now=much_later
    )
    assert second_job != first_job
    with sessions() as session:
        generations = sorted(j.generation for j in session.scalars(select(Job)))
        assert generations == [1, 2]


def test_study_completes_once_its_announced_instances_are_stored(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store = InstanceStore(tmp_path / "storage")
    receive(sessions, store, "1.2.4", "1.2.4.1", announced=2)
    receive(sessions, store, "1.2.5", "1.2.5.1")  # announces nothing: waits for the quiet period
    now = utcnow()
    assert complete_studies(sessions, quiet_period_s=3600, max_attempts=3, now=now) == []
    receive(sessions, store, "1.2.4", "1.2.4.2", announced=2)
    (job_id,) = complete_studies(sessions, quiet_period_s=3600, max_attempts=3, now=now)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        study = session.get(Study, job.study_id)
        assert study is not None
        assert (study.study_instance_uid, study.expected_instances) == ("1.2.4", 2)
        assert study.status is StudyStatus.COMPLETE
        other = session.scalars(select(Study).where(Study.study_instance_uid == "1.2.5")).one()
        assert other.status is StudyStatus.RECEIVING

    # A third image, beyond the announced two, reopens the study: complete again at once.
    receive(sessions, store, "1.2.4", "1.2.4.3", announced=2)
    (second,) = complete_studies(sessions, quiet_period_s=3600, max_attempts=3, now=now)
    assert second != job_id


def test_an_instance_stored_while_a_pass_runs_is_queued_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # The pass took its clock reading before the instance was recorded (a busy machine): its
    # job must still count as queued for that copy, or the next pass queues it again.
    store = InstanceStore(tmp_path / "storage")
    before = utcnow() - timedelta(seconds=5)
    receive(sessions, store, "1.2.9", "1.2.9.1")
    assert len(queue_arrived_instances(sessions, max_attempts=3, now=before)) == 1
    assert queue_arrived_instances(sessions, max_attempts=3) == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_each_arrived_instance_gets_one_image_job(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store = InstanceStore(tmp_path / "storage")
    receive(sessions, store, "1.2.6", "1.2.6.1")
    receive(sessions, store, "1.2.6", "1.2.6.2")
    queued = queue_arrived_instances(sessions, max_attempts=3)
    assert len(queued) == 2
    assert queue_arrived_instances(sessions, max_attempts=3) == []  # not twice
    with sessions() as session:
        rows = session.scalars(select(Job).order_by(Job.id)).all()
        assert [r.kind for r in rows] == [JobKind.IMAGE.value] * 2
        assert all(r.instance_id is not None for r in rows)
        study = session.scalars(select(Study)).one()
        assert study.status is StudyStatus.RECEIVING  # the study is still arriving
    claimed = jobs.claim_next(sessions, lease_s=60)
    assert claimed is not None
    assert claimed.instance_id == rows[0].instance_id
    # The study's own job is unaffected: one per generation, next to the image jobs.
    later = utcnow() + timedelta(seconds=11)
    (study_job,) = complete_studies(sessions, quiet_period_s=10, max_attempts=3, now=later)
    with sessions() as session:
        job = session.get(Job, study_job)
        assert job is not None
        assert (job.kind, job.instance_id, job.generation) == (JobKind.STUDY.value, None, 1)


def test_claim_complete_and_nothing_claimed_twice(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store = InstanceStore(tmp_path / "storage")
    receive(sessions, store, "1.2.4", "1.2.4.1")
    complete_quiet_studies(sessions, quiet_period_s=0, max_attempts=3, now=utcnow())
    claimed = jobs.claim_next(sessions, lease_s=60)
    assert claimed is not None
    assert claimed.attempt == 1
    assert jobs.claim_next(sessions, lease_s=60) is None  # leased
    assert jobs.complete(sessions, claimed)
    assert jobs.queue_depths(sessions)["done"] == 1


def test_expired_lease_is_retaken_after_a_crash(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store = InstanceStore(tmp_path / "storage")
    receive(sessions, store, "1.2.5", "1.2.5.1")
    complete_quiet_studies(sessions, quiet_period_s=0, max_attempts=3, now=utcnow())
    first = jobs.claim_next(sessions, lease_s=30)
    assert first is not None
    # The worker died; once the lease has expired another one takes the job.
    again = jobs.claim_next(sessions, lease_s=30, now=utcnow() + timedelta(seconds=31))
    assert again is not None
    assert again.id == first.id
    assert again.attempt == 2


def test_failures_retry_with_backoff_then_fail(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    store = InstanceStore(tmp_path / "storage")
    receive(sessions, store, "1.2.6", "1.2.6.1")
    complete_quiet_studies(sessions, quiet_period_s=0, max_attempts=2, now=utcnow())
    settings = JobSettings(backoff_base_s=0.0, backoff_max_s=0.0)

    def broken(_job: jobs.ClaimedJob) -> None:
        raise RuntimeError("decoder crashed")

    assert run_one(sessions, broken, settings)
    with sessions() as session:
        job = session.scalars(select(Job)).one()
        assert job.state is JobState.PENDING
        assert job.attempts == 1
        assert job.last_error == "RuntimeError: decoder crashed"
    assert run_one(sessions, broken, settings)
    with sessions() as session:
        job = session.scalars(select(Job)).one()
        assert job.state is JobState.FAILED
        assert job.attempts == 2
    assert not run_one(sessions, broken, settings)


def test_backoff_delays_the_next_attempt(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "storage")
    receive(sessions, store, "1.2.7", "1.2.7.1")
    complete_quiet_studies(sessions, quiet_period_s=0, max_attempts=5, now=utcnow())
    claimed = jobs.claim_next(sessions, lease_s=60)
    assert claimed is not None
    before = utcnow()
    jobs.fail(sessions, claimed, "boom", base_s=30, max_s=600)
    with sessions() as session:
        job = session.scalars(select(Job)).one()
        assert job.next_run_at >= before + timedelta(seconds=29)
    assert jobs.claim_next(sessions, lease_s=60) is None
    assert jobs.claim_next(sessions, lease_s=60, now=before + timedelta(seconds=31)) is not None


def test_permanent_failure_is_not_retried(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "storage")
    receive(sessions, store, "1.2.8", "1.2.8.1")
    complete_quiet_studies(sessions, quiet_period_s=0, max_attempts=5, now=utcnow())

    def hopeless(_job: jobs.ClaimedJob) -> None:
        raise PermanentJobError("study no longer exists")

    assert run_one(sessions, hopeless, JobSettings())
    with sessions() as session:
        job = session.scalars(select(Job)).one()
        assert job.state is JobState.FAILED
        assert job.attempts == 1


@given(
    attempt=st.integers(min_value=1, max_value=200),
    base=st.floats(min_value=0, max_value=100),
    cap=st.floats(min_value=0, max_value=10_000),
)
def test_backoff_is_monotonic_and_capped(attempt: int, base: float, cap: float) -> None:
    delay = jobs.backoff_delay(attempt, base_s=base, max_s=cap)
    assert 0 <= delay <= cap
    assert delay <= jobs.backoff_delay(attempt + 1, base_s=base, max_s=cap)


def test_two_nodes_queuing_arrivals_on_postgresql_queue_each_instance_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two nodes' grouping passes race while instances arrive: one image job per instance.

    A pass locks the instances it queues (SKIP LOCKED) but its statement's snapshot may predate
    the other node's commit of a job for one of them; without the check after the lock this
    queued 11 and 22 duplicates of 300 instances in two runs.
    """
    schema = f"race_{secrets.token_hex(4)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    engines = [make_engine(url) for _ in range(3)]
    try:
        upgrade(engines[0])
        arrivals, *nodes = [make_session_factory(engine) for engine in engines]
        store = InstanceStore(tmp_path / "store")
        arriving = threading.Event()
        arriving.set()

        def node(sessions: sessionmaker[Session]) -> None:
            while arriving.is_set():
                queue_arrived_instances(sessions, max_attempts=3, limit=50)

        threads = [threading.Thread(target=node, args=(n,)) for n in nodes]
        for thread in threads:
            thread.start()
        try:
            for i in range(300):
                study = f"1.2.826.0.1.3680043.10.5.{i // 2}"
                receive(arrivals, store, study, f"{study}.{i % 2}")
        finally:
            arriving.clear()
            for thread in threads:
                thread.join(60)
        for sessions in nodes:
            queue_arrived_instances(sessions, max_attempts=3)
        with arrivals() as session:
            queued = Counter(
                session.scalars(select(Job.instance_id).where(Job.kind == JobKind.IMAGE.value))
            )
        assert len(queued) == 300
        assert [i for i, n in queued.items() if n > 1] == []
    finally:
        for engine in engines:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

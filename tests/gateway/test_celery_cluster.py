"""Several machines' worth of processes: two DICOM nodes, two Celery workers, one database.

Real parts only: PostgreSQL (a schema of its own), RabbitMQ (a vhost of its own), Orthanc as the
PACS, and four ``fracture-gateway`` processes started here (``serve --no-api --no-worker`` twice,
``worker`` twice), sharing one storage folder. Each study's two images go to different nodes;
one worker is SIGKILLed while it runs a job (seen in the database: two running rows while each
worker runs one task at a time). Nothing is restarted. Afterwards every study has one job, done,
one SR and its two SCs in Orthanc, every delivery is sent and audited once.

Uses a tiny untrained model package: the test is about the distributed path, not the model.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from db.models import Instance, Job, JobState, Study
from db.results import OutboxEntry, OutboxState, ResultObject
from db.review import AuditEvent
from dicom_node.send import send_files
from tests.helpers.cluster import (
    Started,
    cluster_environment,
    consumers,
    make_studies,
    poll,
    postgres_schema,
    start,
)
from tests.helpers.orthanc import Orthanc, orthanc
from tests.helpers.rabbitmq import broker_url
from tests.helpers.tools import free_port, stop_process, wait_for_port

__all__ = ["broker_url", "orthanc"]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

#: Studies sent; each has two images, one sent to each node.
STUDIES = int(os.environ.get("FRACTURE_GATEWAY_TEST_CLUSTER_STUDIES", "12"))
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
LEASE_S = 8.0
#: Start-up of the four processes (TensorFlow's import dominates; minutes on a loaded machine).
STARTUP_S = 300.0
#: The work itself, from the first image sent.
DEADLINE_S = 120.0 + 10.0 * STUDIES
INSTANCES_TRANSFERRED = "110104"


@pytest.fixture
def schema_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose search path is a fresh schema, dropped afterwards."""
    with postgres_schema(postgres_url) as url:
        yield url


#: What this test changes from the defaults: short leases and backoffs, so that a killed
#: worker's job comes back within the test; study jobs only: a kill must find each worker
#: inside a job, and image jobs are over too soon (the Celery path of an image job:
#: tests/gateway/test_arrival_analysis).
OVERRIDES = {
    "FRACTURE_GATEWAY_JOBS__LEASE_S": str(LEASE_S),
    "FRACTURE_GATEWAY_JOBS__POLL_INTERVAL_S": "0.2",
    "FRACTURE_GATEWAY_GROUPING__ANALYSE_ON_ARRIVAL": "false",
    "FRACTURE_GATEWAY_JOBS__BACKOFF_BASE_S": "0.5",
    "FRACTURE_GATEWAY_JOBS__REPUBLISH_AFTER_S": "20",
    "FRACTURE_GATEWAY_GROUPING__QUIET_PERIOD_S": "3",
    "FRACTURE_GATEWAY_GROUPING__POLL_INTERVAL_S": "0.2",
    "FRACTURE_GATEWAY_OUTBOX__LEASE_S": str(LEASE_S),
    "FRACTURE_GATEWAY_OUTBOX__BACKOFF_BASE_S": "0.5",
    "FRACTURE_GATEWAY_OUTBOX__BACKOFF_MAX_S": "2",
}


@pytest.fixture
def processes() -> Iterator[list[Started]]:
    """The processes a test starts; each is stopped (or found dead) at the end."""
    started: list[Started] = []
    yield started
    for item in reversed(started):
        stop_process(item.process, timeout_s=20)


def test_two_nodes_two_workers_one_killed_mid_job(
    tmp_path: Path,
    shared_dir: Path,
    schema_url: str,
    broker_url: str,
    orthanc: Orthanc,
    processes: list[Started],
) -> None:
    from tests.training.packages import make_package

    model = tmp_path / "model"
    make_package(model, size=64)
    studies = make_studies(shared_dir, tmp_path, STUDIES)
    env = cluster_environment(
        tmp_path / "shared-storage", schema_url, broker_url, model, orthanc, OVERRIDES
    )

    workers = [
        start(processes, f"worker{i}", ["worker", "--concurrency", "1"], env, tmp_path / f"w{i}")
        for i in range(2)
    ]
    nodes = []
    for i in range(2):
        port = free_port()
        node_env = {**env, "FRACTURE_GATEWAY_NODE__PORT": str(port)}
        args = ["serve", "--no-api", "--no-worker"]
        node = start(processes, f"node{i}", args, node_env, tmp_path / f"n{i}")
        node.port = port
        nodes.append(node)
    startup = time.monotonic() + STARTUP_S
    for node in nodes:
        wait_for_port(node.port or 0, process=node.process, timeout_s=STARTUP_S)
    poll(
        "both workers consuming",
        lambda: consumers(broker_url, "analysis") == 2,
        startup,
        interval_s=0.5,
    )
    engine = create_engine(schema_url)
    sessions = sessionmaker(engine)
    deadline = time.monotonic() + DEADLINE_S

    def scalar(query: object) -> int:
        with sessions() as session:
            return int(session.scalar(query) or 0)  # type: ignore[call-overload]

    # Each study's first image to one node, its second to the other, one after the other.
    for study_uid, first, second in studies:
        (a,) = send_files([first], "127.0.0.1", nodes[0].port or 0, "FRACTUREGW", "MODALITY")
        (b,) = send_files([second], "127.0.0.1", nodes[1].port or 0, "FRACTUREGW", "MODALITY")
        assert (a.ok, b.ok) == (True, True), (study_uid, a.error, b.error)

    # In the middle of a job: both workers (one task at a time each) hold a running row.
    running = select(func.count()).select_from(Job).where(Job.state == JobState.RUNNING)
    poll("two jobs running at once", lambda: scalar(running) >= 2, deadline, interval_s=0.02)
    with sessions() as session:
        held = session.execute(
            select(Job.id, Job.lease_token).where(Job.state == JobState.RUNNING)
        ).all()
    os.kill(workers[0].pid, signal.SIGKILL)
    workers[0].process.wait(10)

    # Everything finishes without a restart: the survivor takes the dead worker's job once its
    # lease lapses (the sweeper publishes it again; the redelivered message was refused).
    jobs_done = select(func.count()).select_from(Job).where(Job.state == JobState.DONE)
    poll("all jobs done", lambda: scalar(jobs_done) >= STUDIES, deadline, interval_s=0.5)
    sent = (
        select(func.count()).select_from(OutboxEntry).where(OutboxEntry.state == OutboxState.SENT)
    )
    poll("all results sent", lambda: scalar(sent) >= 3 * STUDIES, deadline, interval_s=0.5)
    assert workers[1].process.poll() is None, "the surviving worker died"

    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == STUDIES
        per_study = Counter(session.scalars(select(Instance.study_id)))
        assert sorted(per_study.values()) == [2] * STUDIES  # both nodes' images, one study
        job_rows = session.execute(select(Job.study_id, Job.state, Job.id, Job.lease_token)).all()
        assert sorted(Counter(r.study_id for r in job_rows).values()) == [1] * STUDIES
        assert {r.state for r in job_rows} == {JobState.DONE}
        tokens = {r.id: r.lease_token for r in job_rows}
        # At least one job held at the kill was claimed again after it (the dead worker's).
        assert any(tokens[job_id] > token for job_id, token in held)
        outbox = session.execute(
            select(OutboxEntry.state, ResultObject.study_id, ResultObject.kind).join(ResultObject)
        ).all()
        assert {r.state for r in outbox} == {OutboxState.SENT}
        sent_per_study = Counter(r.study_id for r in outbox)
        assert sorted(sent_per_study.values()) == [3] * STUDIES
        uid_of = dict(session.execute(select(Study.id, Study.study_instance_uid)).all())

    # The audit agrees with the outbox: each study's sent objects counted once, as delivered.
    def audited() -> Counter[str]:
        with sessions() as session:
            rows = session.execute(
                select(AuditEvent.study_instance_uid, AuditEvent.instance_count).where(
                    AuditEvent.event_id_code == INSTANCES_TRANSFERRED,
                    AuditEvent.action == "R",
                    AuditEvent.outcome == 0,
                )
            ).all()
        counts: Counter[str] = Counter()
        for uid, count in rows:
            counts[str(uid)] += int(count or 0)
        return counts

    expected = Counter({uid_of[study_id]: n for study_id, n in sent_per_study.items()})
    poll("deliveries audited", lambda: audited() == expected, deadline, interval_s=0.5)

    # The PACS holds, per study, one SR and one SC per image, nothing doubled (the images
    # themselves went to the nodes only).
    for study_uid, _, _ in studies:
        (found,) = orthanc.post(
            "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
        )
        instances = orthanc.study_instances(found)
        classes = Counter(orthanc.tags(i["ID"])["SOPClassUID"] for i in instances)
        assert (classes[SR_CLASS], classes[SC_CLASS], len(instances)) == (1, 2, 3), study_uid

"""Several machines' worth of processes: two DICOM nodes, two Celery workers, one database, a
worker SIGKILLed inside a job and a RabbitMQ restart while work is in flight.

Real parts only: PostgreSQL (a schema of its own), RabbitMQ (a vhost of its own), Orthanc as the
PACS, and four ``fracture-gateway`` processes started here (``serve --no-api --no-worker`` twice,
``worker --concurrency 1`` twice), sharing one storage folder. The settings are the product's
defaults (analysis on arrival: an image job per image as it is stored, then a study job after
the quiet period) apart from shorter leases, backoffs and polls, so that a dead worker's job
comes back within the test.

30 two-image studies are sent from a thread, each study's first image to one node and its
second to the other, as modalities would. Meanwhile:

- one worker is SIGKILLed inside a job. Both workers are paused (SIGSTOP) together and the
  jobs table is read: two running rows then mean each worker, running one task at a time, is
  inside one of them (image or study job), and the first worker is killed while still paused;
  otherwise both go on and the check is repeated. No sleep decides where the kill lands;
- RabbitMQ is restarted at once (``rabbitmqctl stop_app``, then ``start_app``): every
  connection is closed, the AMQP port refuses connections, the killed worker's job is still
  leased, later studies may still be arriving. The surviving worker and both nodes' sweepers
  reconnect by themselves.

Afterwards every study has one study job and one image job per image, all done (the killed
worker's job claimed again, the other job held at the kill not), one SR and its two SCs in
Orthanc and nothing more, every delivery sent and audited once.

The restart disconnects every client of the broker; it is refused (a failure under CI, a skip
elsewhere) when clients of other vhosts are connected, e.g. a second test run on one machine.
Uses a tiny untrained model package: the test is about the distributed path, not the model.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from db.models import Instance, Job, JobKind, JobState, Study
from db.results import OutboxEntry, OutboxState, ResultObject
from db.review import AuditEvent
from dicom_node.send import send_files
from gateway.celery_app import ANALYSIS_QUEUE
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
from tests.helpers.rabbitmq import (
    accepts_amqp,
    broker_stopped,
    broker_url,
    connected_vhosts,
    vhost_of,
)
from tests.helpers.tools import free_port, in_ci, stop_process, wait_for_port

__all__ = ["broker_url", "orthanc"]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

#: Studies sent; each has two images, one sent to each node.
STUDIES = int(os.environ.get("FRACTURE_GATEWAY_TEST_CLUSTER_STUDIES", "30"))
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


#: What this test changes from the defaults: short leases, backoffs and polls, so that a killed
#: worker's job comes back within the test (the default lease is a minute).
OVERRIDES = {
    "FRACTURE_GATEWAY_JOBS__LEASE_S": str(LEASE_S),
    "FRACTURE_GATEWAY_JOBS__POLL_INTERVAL_S": "0.2",
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
    """The processes a test starts; each is stopped (or found dead) at the end, all at once."""
    started: list[Started] = []
    yield started
    running = [item for item in reversed(started) if item.process.poll() is None]
    for item in running:
        item.resume()  # a test that failed while it was paused
        item.process.terminate()  # they shut down side by side, not one after the other
    for item in running:
        stop_process(item.process, timeout_s=20)


def refuse_unless_alone(vhost: str) -> None:
    """Fail (CI) or skip unless every client connected to the broker uses ``vhost``: a broker
    restart would disconnect anyone else's."""
    others = sorted(set(connected_vhosts()) - {vhost})
    if others:
        message = f"other clients use RabbitMQ (vhosts {others}): it is not restarted under them"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


def test_two_nodes_two_workers_one_killed_mid_job_broker_restarted(
    tmp_path: Path,
    shared_dir: Path,
    schema_url: str,
    broker_url: str,
    orthanc: Orthanc,
    processes: list[Started],
) -> None:
    from tests.training.packages import make_package

    refuse_unless_alone(vhost_of(broker_url))
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
        lambda: consumers(broker_url, ANALYSIS_QUEUE) == 2,
        startup,
        interval_s=0.5,
    )
    engine = create_engine(schema_url)
    sessions = sessionmaker(engine)
    deadline = time.monotonic() + DEADLINE_S

    def scalar(query: object) -> int:
        with sessions() as session:
            return int(session.scalar(query) or 0)  # type: ignore[call-overload]

    def send_all() -> list[tuple[str, str | None, str | None]]:
        """Each study's first image to one node, its second to the other; the failures."""
        failures = []
        for study_uid, first, second in studies:
            (a,) = send_files([first], "127.0.0.1", nodes[0].port or 0, "FRACTUREGW", "MODALITY")
            (b,) = send_files([second], "127.0.0.1", nodes[1].port or 0, "FRACTUREGW", "MODALITY")
            if not (a.ok and b.ok):
                failures.append((study_uid, a.error, b.error))
        return failures

    with ThreadPoolExecutor(1, thread_name_prefix="modalities") as modalities:
        sending = modalities.submit(send_all)

        # Inside a job: with both workers paused, two running rows mean one job each.
        running = select(func.count()).select_from(Job).where(Job.state == JobState.RUNNING)

        def both_paused_inside_a_job() -> bool:
            if scalar(running) < 2:
                return False  # not worth pausing for
            for worker in workers:
                worker.pause()
            if scalar(running) >= 2:
                return True  # left paused
            for worker in workers:
                worker.resume()
            return False

        poll("both workers inside a job", both_paused_inside_a_job, deadline, interval_s=0.01)
        with sessions() as session:
            held = session.execute(
                select(Job.id, Job.lease_token).where(Job.state == JobState.RUNNING)
            ).all()
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].process.wait(10)
        workers[1].resume()
        assert len(held) == 2

        # At once, with the killed worker's job still leased: the broker goes away and comes
        # back. Nothing else may be connected to it (checked again: a run may have started).
        refuse_unless_alone(vhost_of(broker_url))
        unfinished = select(func.count()).select_from(Job).where(Job.state != JobState.DONE)
        with broker_stopped():
            assert not accepts_amqp(), "RabbitMQ's application did not stop"
            in_flight = scalar(unfinished)
        assert in_flight >= 1  # at least the killed worker's job
        poll(
            "the surviving worker consuming again",
            lambda: consumers(broker_url, ANALYSIS_QUEUE) == 1,
            deadline,
            interval_s=0.5,
        )
        assert sending.result(timeout=max(deadline - time.monotonic(), 1)) == []

    # Everything finishes: the survivor takes the dead worker's job once its lease lapses (a
    # sweeper publishes it again; the redelivered message was refused), and the messages
    # published before the restart, or not published during it, are not missed.
    study_jobs_done = (
        select(func.count())
        .select_from(Job)
        .where(Job.kind == JobKind.STUDY.value, Job.state == JobState.DONE)
    )
    poll(
        "every study's job done, no job left",
        lambda: scalar(study_jobs_done) >= STUDIES and scalar(unfinished) == 0,
        deadline,
        interval_s=0.5,
    )
    sent = (
        select(func.count()).select_from(OutboxEntry).where(OutboxEntry.state == OutboxState.SENT)
    )
    poll("all results sent", lambda: scalar(sent) >= 3 * STUDIES, deadline, interval_s=0.5)
    assert workers[1].process.poll() is None, "the surviving worker died"

    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == STUDIES
        per_study = Counter(session.scalars(select(Instance.study_id)))
        assert sorted(per_study.values()) == [2] * STUDIES  # both nodes' images, one study
        job_rows = session.execute(
            select(Job.id, Job.kind, Job.study_id, Job.instance_id, Job.state, Job.lease_token)
        ).all()
        assert {r.state for r in job_rows} == {JobState.DONE}
        study_jobs = Counter(r.study_id for r in job_rows if r.kind == JobKind.STUDY.value)
        assert sorted(study_jobs.values()) == [1] * STUDIES
        image_jobs = Counter(r.instance_id for r in job_rows if r.kind == JobKind.IMAGE.value)
        assert sorted(image_jobs.values()) == [1] * (2 * STUDIES)  # one per instance
        tokens = {r.id: r.lease_token for r in job_rows}
        # Of the two jobs held at the kill, the dead worker's was claimed again, the other not.
        assert sorted(tokens[job_id] > token for job_id, token in held) == [False, True]
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
    engine.dispose()

"""``fracture-gateway worker``: a Celery worker that runs analysis jobs and deliveries by row id.

The worker builds its parts once (engine, storage, the pipeline with its model, the sender)
and runs tasks on Celery's ``threads`` pool: the pipeline is already safe to run on several
threads sharing one model (the in-process executor does so), TensorFlow is not safe to use
across ``fork`` and releases the GIL in its kernels, and one model per process keeps memory
predictable. More parallelism, or isolation between jobs, comes from more worker processes.

A task claims the row its message names; when the row is not due (running under another
worker's lease, done, held), the message is dropped: the row itself says what is left to do
and the sweeper publishes it again when it is due.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from dicom_node.network_audit import NodeAudit
from dicom_node.outbox import OutboxWorker, claim_one
from dicom_node.storage import InstanceStore
from gateway.celery_app import ANALYSE_TASK, DELIVER_TASK, make_app
from gateway.worker import run_one
from inference import isolation
from pipeline.study import StudyPipeline

log = logging.getLogger(__name__)

#: The pools a worker may use (prefork is left out: TensorFlow does not survive a fork).
POOLS = ("threads", "solo")
#: How long a delivery task waits for its audit records to be written before it is acked.
AUDIT_FLUSH_S = 10.0


@dataclass
class WorkerContext:
    """What the tasks of one worker process share, built once when the process starts."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: InstanceStore
    audit: NodeAudit
    pipeline: StudyPipeline
    sender: OutboxWorker
    #: Whether this worker holds the process's decode pool (:mod:`inference.isolation`).
    decode_pool_held: bool = False

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        """Connect, migrate, load the model and prepare the sender (not started: tasks call it)."""
        from gateway.service import build_pipeline

        engine = make_engine(
            settings.database_url,
            echo=settings.database.echo,
            busy_timeout_s=settings.database.sqlite_busy_timeout_s,
        )
        upgrade(engine)
        sessions = make_session_factory(engine)
        store = InstanceStore(settings.storage_folder)
        audit = NodeAudit.from_settings(settings, sessions)
        audit.start()
        pipeline = build_pipeline(settings, sessions, store)
        sender = OutboxWorker(
            sessions,
            store,
            settings.destinations,
            settings.outbox,
            calling_ae_title=settings.node.ae_title,
            tls=settings.node.tls,
            on_attempts=audit.deliveries_attempted,
        )
        # Compressed Pixel Data is decoded in children of this worker process (forkserver:
        # the threads pool and TensorFlow rule out fork), started on the first such decode.
        held = isolation.acquire(settings.inference.decode_isolation)
        return cls(settings, engine, sessions, store, audit, pipeline, sender, held)

    def analyse(self, job_id: int) -> None:
        """Run the named job if it is due (claimed with a fenced lease, heartbeat while it runs)."""
        if not run_one(self.sessions, self.pipeline, self.settings.jobs, job_id=job_id):
            log.info("job %d is not due (running elsewhere, done or held): message dropped", job_id)

    def deliver(self, outbox_id: int) -> None:
        """Send the named outbox row if it is due, then wait until its audit record is written."""
        delivery = claim_one(self.sessions, outbox_id, lease_s=self.settings.outbox.lease_s)
        if delivery is None:
            log.info("outbox %d is not due (sending elsewhere or settled): dropped", outbox_id)
            return
        self.sender.send_claimed([delivery])
        # Acknowledge the message only once the audit trail holds the delivery's record.
        deadline = time.monotonic() + AUDIT_FLUSH_S
        while not self.audit.trail.idle() and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.audit.stop()
        if self.decode_pool_held:
            self.decode_pool_held = False
            isolation.release()
        self.engine.dispose()


def register_tasks(app: Celery, context: WorkerContext) -> None:
    """The two tasks; each message carries one row id only."""

    @app.task(name=ANALYSE_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def analyse_job(job_id: int) -> None:
        context.analyse(int(job_id))

    @app.task(name=DELIVER_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def deliver(outbox_id: int) -> None:
        context.deliver(int(outbox_id))


def run_worker(
    settings: Settings, *, queues: Sequence[str], concurrency: int, pool: str = "threads"
) -> int:
    """Run a Celery worker on ``queues`` until it is shut down (SIGTERM: warm shutdown, the
    running tasks finish). Returns the worker's exit code."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    context = WorkerContext.build(settings)
    try:
        app = make_app(settings)
        register_tasks(app, context)
        worker = app.Worker(
            queues=list(queues),
            concurrency=concurrency,
            pool=pool,
            hostname=f"fracture-gateway-{os.getpid()}@{socket.gethostname()}",
            loglevel=settings.log_level,
            without_mingle=True,
            without_gossip=True,
            optimization="fair",
            quiet=True,
        )
        worker.start()
        return int(worker.exitcode or 0)
    finally:
        context.close()

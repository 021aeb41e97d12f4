"""Composition root: build every part once from the settings and run them in one process.

Nothing here happens at import time; :class:`Service` is built from explicit settings and
started and stopped explicitly (tests start several on ephemeral ports).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import JobExecutor, Settings
from db.engine import make_engine, make_session_factory
from db.migrate import upgrade
from dicom_node.activity import IngestActivity
from dicom_node.grouping import GroupingTimer
from dicom_node.network_audit import NodeAudit
from dicom_node.outbox import OutboxWorker
from dicom_node.reconcile import ReconcileReport, reconcile_storage
from dicom_node.scp import StoreContext, start_scp
from dicom_node.sizes import fill_image_sizes
from dicom_node.storage import InstanceStore
from dicom_node.transport import GuardedAssociationServer
from gateway.worker import Executor, InProcessExecutor
from inference import isolation
from pipeline.study import ClassifyStep, PipelineStep, StudyPipeline

log = logging.getLogger(__name__)


def build_pipeline(
    settings: Settings,
    sessions: sessionmaker[Session],
    store: InstanceStore,
    *,
    on_results_queued: Callable[[], None] | None = None,
) -> StudyPipeline:
    """The study pipeline for these settings: classify, then analyse and publish when enabled
    (an image job: classify and analyse its instance).

    ``on_results_queued`` is called when the publish step has queued deliveries (it wakes the
    outbox worker).
    """
    classify = ClassifyStep(sessions, store)
    steps: list[PipelineStep] = [classify]
    image_steps: list[PipelineStep] = [classify]
    if settings.inference.enabled:
        from pipeline.analysis import AnalyseStep
        from pipeline.publish import PublishStep

        analyse = AnalyseStep.from_settings(settings, sessions, store)
        steps.append(analyse)
        image_steps.append(analyse)
        steps.append(
            PublishStep.from_settings(
                settings, sessions, store, card=analyse.card, on_queued=on_results_queued
            )
        )
    return StudyPipeline(steps, image_steps)


@dataclass
class Service:
    """The running parts of fracture-gateway."""

    settings: Settings
    engine: Engine = field(init=False)
    sessions: sessionmaker[Session] = field(init=False)
    store: InstanceStore = field(init=False)
    scp: GuardedAssociationServer | None = field(init=False, default=None)
    grouping: GroupingTimer | None = field(init=False, default=None)
    #: The in-process workers, or the Celery sweeper that publishes due rows (None: neither).
    executor: Executor | None = field(init=False, default=None)
    #: What the node received lately, which the in-process workers yield to (None: no yielding).
    ingest: IngestActivity | None = field(init=False, default=None)
    #: The audit of DICOM network events (None until started).
    audit: NodeAudit | None = field(init=False, default=None)
    #: The model the workers run, shared with the API so it is loaded once (None: not loaded).
    predictor: Any = field(init=False, default=None)
    #: What the start-up reconciliation of the storage folder did (None: not run here).
    reconciliation: ReconcileReport | None = field(init=False, default=None)
    extra: list[Any] = field(init=False, default_factory=list)
    #: Whether this service holds the process's decode pool (:mod:`inference.isolation`).
    decode_pool_held: bool = field(init=False, default=False)
    _stopped: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(
            self.settings.database_url,
            echo=self.settings.database.echo,
            busy_timeout_s=self.settings.database.sqlite_busy_timeout_s,
        )
        upgrade(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.store = InstanceStore(self.settings.storage_folder)

    @property
    def dicom_port(self) -> int:
        """The port the SCP listens on (useful when started on port 0)."""
        assert self.scp is not None
        return int(self.scp.server_address[1])

    def start(self, *, dicom: bool = True, worker: bool = True, sweeper: bool = True) -> None:
        """Start the SCP, the grouping timer and the job workers.

        With ``jobs.executor = "celery"`` this process runs no workers: ``sweeper`` publishes the
        ids of due jobs and deliveries to RabbitMQ for ``fracture-gateway worker`` processes
        (:mod:`gateway.celery_app`), and ``worker`` is ignored.

        The process that receives (``dicom``) first reconciles the storage folder with the
        database, before any association is accepted: files a crash left without a row are
        recorded or removed (:mod:`dicom_node.reconcile`), and instances recorded before ingest
        kept image sizes get theirs (:mod:`dicom_node.sizes`). Other roles leave the folder alone,
        since a receiving process may be writing to it.
        """
        # The job workers, the publish step and the API decode here: compressed Pixel Data goes
        # to child processes (their processes start on the first such decode).
        self.decode_pool_held = isolation.acquire(self.settings.inference.decode_isolation)
        if dicom or worker:
            self.audit = NodeAudit.from_settings(self.settings, self.sessions)
            self.audit.start()
        if dicom:
            self.reconciliation = reconcile_storage(self.sessions, self.store)
            fill_image_sizes(self.sessions, self.store)
        on_jobs = None
        jobs_settings = self.settings.jobs
        celery = jobs_settings.executor is JobExecutor.CELERY
        # Workers and node in one process: the workers yield the CPUs to a burst of C-STOREs.
        ingest = self.ingest = (
            IngestActivity(jobs_settings.yield_to_ingest_s, jobs_settings.yield_max_s)
            if dicom and worker and not celery and jobs_settings.yield_to_ingest_s > 0
            else None
        )
        if celery and sweeper:
            from gateway.celery_app import Sweeper, make_app

            sweeping = Sweeper(
                self.sessions,
                make_app(self.settings),
                poll_interval_s=self.settings.jobs.poll_interval_s,
                republish_after_s=self.settings.jobs.republish_after_s,
            )
            sweeping.start()
            self.executor = sweeping
            on_jobs = lambda _ids: sweeping.wake()  # noqa: E731 - publish new jobs at once
        if worker and not celery:
            outbox = OutboxWorker(
                self.sessions,
                self.store,
                self.settings.destinations,
                self.settings.outbox,
                calling_ae_title=self.settings.node.ae_title,
                tls=self.settings.node.tls,
                on_attempts=self.audit.deliveries_attempted if self.audit else None,
            )
            outbox.start()
            self.extra.append(outbox)
            pipeline = build_pipeline(
                self.settings, self.sessions, self.store, on_results_queued=outbox.wake
            )
            self.predictor = next(
                (s.predictor for s in pipeline.steps if hasattr(s, "predictor")), None
            )
            executor = InProcessExecutor(self.sessions, pipeline, jobs_settings, ingest)
            executor.start()
            self.executor = executor
            on_jobs = lambda _ids: executor.wake()  # noqa: E731 - wake the workers at once
        self.grouping = GroupingTimer(
            self.sessions,
            quiet_period_s=self.settings.grouping.quiet_period_s,
            poll_interval_s=self.settings.grouping.poll_interval_s,
            max_attempts=self.settings.jobs.max_attempts,
            on_jobs=on_jobs,
            analyse_on_arrival=self.settings.grouping.analyse_on_arrival,
        )
        self.grouping.start()
        if dicom:
            ctx = StoreContext(self.settings, self.store, self.sessions, self.audit, ingest)
            self.scp = start_scp(self.settings, ctx)
            log.info(
                "DICOM node %s listening on %s:%d",
                self.settings.node.ae_title,
                self.settings.node.bind_address,
                self.dicom_port,
            )

    def stop(self) -> None:
        """Stop accepting, then stop the background parts; idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.scp is not None:
            self.scp.shutdown()
        for part in reversed(self.extra):
            part.stop()
        if self.grouping is not None:
            self.grouping.stop()
        if self.executor is not None:
            self.executor.stop()
        if self.audit is not None:
            self.audit.stop()
        if self.decode_pool_held:
            self.decode_pool_held = False
            isolation.release()
        self.engine.dispose()

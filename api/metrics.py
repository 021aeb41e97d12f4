"""Prometheus metrics computed from the database at scrape time.

A custom collector on a registry of its own (not the process-global one): whichever process
serves ``/metrics`` reports the state of the whole service, since the state lives in the
database, and tests can build many applications in one process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.base import utcnow
from db.engine import reading
from db.models import (
    Eligibility,
    ImagePrediction,
    Instance,
    Job,
    JobState,
    ReconcileAction,
    StorageReconciliation,
    Study,
)
from db.results import OutboxEntry, OutboxState
from db.review import AuditEvent

PREFIX = "fracture_gateway"


def _counts(rows: Iterable[tuple[object, int]]) -> dict[str, int]:
    return {str(key): int(n) for key, n in rows}


class DatabaseCollector(Collector):
    """Counts from the database: ingest, jobs, inference, deliveries, failures."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    @staticmethod
    def _queue_age(session: Session) -> GaugeMetricFamily:
        """How long the oldest due, unclaimed item of each queue has waited (0 when none).

        Depth says how much work there is; age says whether it keeps up: a queue whose oldest
        due item grows older at every scrape needs more workers (docs/DEPLOY.md). An item that
        backs off after a failure is not due until its next attempt, so it does not count.
        """
        now = utcnow()
        age = GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_due_seconds",
            "Seconds the oldest due, unclaimed item of a queue has waited",
            labels=["queue"],
        )
        oldest_job = session.scalar(
            select(func.min(Job.next_run_at)).where(
                Job.state == JobState.PENDING, Job.next_run_at <= now
            )
        )
        oldest_delivery = session.scalar(
            select(func.min(OutboxEntry.next_attempt_at)).where(
                OutboxEntry.state == OutboxState.PENDING, OutboxEntry.next_attempt_at <= now
            )
        )
        for queue, oldest in (("analysis", oldest_job), ("delivery", oldest_delivery)):
            waited = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
            age.add_metric([queue], waited)
        return age

    def collect(self) -> Iterator[Metric]:
        with reading(self._sessions) as session:
            yield from self._collect(session)

    def _collect(self, session: Session) -> Iterator[Metric]:
        received = CounterMetricFamily(
            f"{PREFIX}_instances_received",
            "DICOM instances received and stored, by eligibility for analysis",
            labels=["eligibility"],
        )
        by_eligibility = _counts(
            session.execute(
                select(Instance.eligibility, func.count()).group_by(Instance.eligibility)
            )
        )
        for value in Eligibility:
            received.add_metric([value.value], float(by_eligibility.get(value.value, 0)))
        yield received

        studies = GaugeMetricFamily(f"{PREFIX}_studies", "Studies by status", labels=["status"])
        for status, n in session.execute(select(Study.status, func.count()).group_by(Study.status)):
            studies.add_metric([str(status)], float(n))
        yield studies

        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Analysis jobs by state", labels=["state"])
        by_state = _counts(session.execute(select(Job.state, func.count()).group_by(Job.state)))
        for state in JobState:
            jobs.add_metric([state.value], float(by_state.get(state.value, 0)))
        yield jobs
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Jobs waiting or running",
            value=float(
                by_state.get(JobState.PENDING.value, 0) + by_state.get(JobState.RUNNING.value, 0)
            ),
        )

        yield self._queue_age(session)

        count, total_ms = session.execute(
            select(func.count(ImagePrediction.inference_ms), func.sum(ImagePrediction.inference_ms))
        ).one()
        yield SummaryMetricFamily(
            f"{PREFIX}_inference_seconds",
            "Model inference time per image",
            count_value=int(count or 0),
            sum_value=float(total_ms or 0.0) / 1000.0,
        )

        deliveries = CounterMetricFamily(
            f"{PREFIX}_deliveries",
            "Result object deliveries by state",
            labels=["state"],
        )
        by_delivery = _counts(
            session.execute(select(OutboxEntry.state, func.count()).group_by(OutboxEntry.state))
        )
        for outbox_state in OutboxState:
            deliveries.add_metric(
                [outbox_state.value], float(by_delivery.get(outbox_state.value, 0))
            )
        yield deliveries

        failures = CounterMetricFamily(
            f"{PREFIX}_failures", "Work given up on, by kind", labels=["kind"]
        )
        failures.add_metric(["job"], float(by_state.get(JobState.FAILED.value, 0)))
        failures.add_metric(["delivery"], float(by_delivery.get(OutboxState.DEAD_LETTER.value, 0)))
        failed_logins = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.event_id_code == "110114", AuditEvent.outcome != 0)
        )
        failures.add_metric(["authentication"], float(failed_logins or 0))
        yield failures

        conflicts = GaugeMetricFamily(
            f"{PREFIX}_identity_conflicts",
            "Studies held because an image names another patient (waiting for an admin)",
            value=float(
                session.scalar(
                    select(func.count()).select_from(Study).where(Study.identity_conflict.is_(True))
                )
                or 0
            ),
        )
        yield conflicts

        # Rows are only added, one per start-up, so the sums only grow: counters.
        reconciled = CounterMetricFamily(
            f"{PREFIX}_storage_reconciled_files",
            "Files found without a database row by start-up reconciliation, by what was done",
            labels=["action"],
        )
        sums = session.execute(
            select(
                *(
                    func.coalesce(func.sum(getattr(StorageReconciliation, action.value)), 0)
                    for action in ReconcileAction
                )
            )
        ).one()
        for action, total in zip(ReconcileAction, sums, strict=True):
            reconciled.add_metric([action.value], float(total))
        yield reconciled


def make_registry(
    sessions: sessionmaker[Session], extra: Iterable[Collector] = ()
) -> CollectorRegistry:
    """A registry holding the database collector and ``extra`` ones of this process.

    ``extra`` are in-process counters, such as the network audit's queues
    (:class:`audit.metrics.AuditCollector`) when the API runs in the DICOM node's process.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(sessions))
    for collector in extra:
        registry.register(collector)
    return registry

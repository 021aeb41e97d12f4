"""The Celery executor: RabbitMQ carries row ids, the database decides who runs what.

``serve`` (with ``jobs.executor = "celery"``) runs a :class:`Sweeper` that publishes the id of
every due job and delivery to RabbitMQ; ``fracture-gateway worker`` processes
(:mod:`gateway.celery_worker`) consume them, claim the named row with its fencing token
(:func:`db.jobs.claim`, :func:`dicom_node.outbox.claim_one`) and run the same pipeline and
sender as the in-process executor. The message is only a hint that a row may be due:

- a lost message or a broker restart loses nothing: the row is still due in the database and
  the sweeper publishes it again after ``jobs.republish_after_s``;
- a worker that dies mid-task leaves its message unacknowledged (``acks_late``,
  ``task_reject_on_worker_lost``), so RabbitMQ delivers it again; the new claim is refused
  while the dead worker's lease runs, and once it lapses the row's token has changed, so the
  sweeper publishes it at once;
- publishing twice is harmless: the second claim of a running or finished row is refused.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from kombu.entity import Queue as KombuQueue
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from db.jobs import JOBS
from db.queue import Queue
from dicom_node.outbox import OUTBOX

log = logging.getLogger(__name__)

#: The RabbitMQ queue of analysis jobs (a job id per message).
ANALYSIS_QUEUE = "analysis"
#: The RabbitMQ queue of deliveries (an outbox row id per message), apart from the slow jobs.
DELIVERY_QUEUE = "delivery"
ANALYSE_TASK = "fracture_gateway.analyse_job"
DELIVER_TASK = "fracture_gateway.deliver"
#: At most this many ids of one queue are published per sweep (oldest due first).
SWEEP_LIMIT = 1000


def make_app(settings: Settings) -> Celery:
    """The Celery application for these settings (no tasks: see :mod:`gateway.celery_worker`).

    Messages are persistent on durable queues; a worker takes one message at a time
    (``worker_prefetch_multiplier = 1``) and acknowledges it only when the task has ended
    (``acks_late``), also when its process was killed (``task_reject_on_worker_lost``: the
    message goes back to the queue). No result backend: results live in the database.
    """
    app = Celery(
        "fracture_gateway",
        broker=settings.jobs.broker_url.get_secret_value(),
        set_as_current=False,
    )
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_queues=(
            KombuQueue(ANALYSIS_QUEUE, routing_key=ANALYSIS_QUEUE),  # type: ignore[no-untyped-call]
            KombuQueue(DELIVERY_QUEUE, routing_key=DELIVERY_QUEUE),  # type: ignore[no-untyped-call]
        ),
        task_default_queue=ANALYSIS_QUEUE,
        task_routes={
            ANALYSE_TASK: {"queue": ANALYSIS_QUEUE, "routing_key": ANALYSIS_QUEUE},
            DELIVER_TASK: {"queue": DELIVERY_QUEUE, "routing_key": DELIVERY_QUEUE},
        },
        task_create_missing_queues=False,
        # A publish that cannot reach the broker fails soon: the row stays due and the next
        # sweep tries again, so the sweeper never blocks on a dead broker for long.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        broker_connection_retry_on_startup=True,
        # A task running when the broker connection drops (a broker restart) runs to its end:
        # the row, not the message, says what is done, and the message delivered again is
        # dropped. Said here because Celery 6 is to cancel such tasks by default.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


class Sweeper:
    """Publishes the ids of due jobs and deliveries to RabbitMQ, every poll interval.

    A row is published when it becomes due, again at once when it was claimed since its last
    publication (its fencing token changed: a lapsed lease, a retry after backoff), and again
    when it stays due ``republish_after_s`` after its last publication (its message was lost).
    Several sweepers (one per ``serve`` process) may run at once: duplicates are refused by the
    fenced claim. What was published is kept in memory only; a restarted sweeper publishes
    every due row once.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        app: Celery,
        *,
        poll_interval_s: float,
        republish_after_s: float,
    ) -> None:
        self._sessions = sessions
        self._app = app
        self._poll_interval_s = poll_interval_s
        self._republish_after_s = republish_after_s
        self._lanes: tuple[tuple[Queue, str, str], ...] = (
            (JOBS, ANALYSE_TASK, ANALYSIS_QUEUE),
            (OUTBOX, DELIVER_TASK, DELIVERY_QUEUE),
        )
        #: (queue name, row id) -> (lease token when published, monotonic time published)
        self._published: dict[tuple[str, int], tuple[int, float]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="celery-sweeper", daemon=True)

    def sweep_once(self) -> int:
        """Publish the due rows that need it; returns how many ids were published."""
        published = 0
        now = time.monotonic()
        with self._app.producer_or_acquire() as producer:
            for queue, task, lane in self._lanes:
                due = queue.due_rows(self._sessions, limit=SWEEP_LIMIT)
                still_due = set()
                for row_id, token in due:
                    key = (lane, row_id)
                    still_due.add(key)
                    last = self._published.get(key)
                    if (
                        last is not None
                        and last[0] == token
                        and now - last[1] < self._republish_after_s
                    ):
                        continue  # published, not claimed since, not yet worth repeating
                    self._app.send_task(
                        task, args=(row_id,), queue=lane, routing_key=lane, producer=producer
                    )
                    self._published[key] = (token, now)
                    published += 1
                for key in [k for k in self._published if k[0] == lane and k not in still_due]:
                    del self._published[key]
        if published:
            log.debug("published %d due row ids", published)
        return published

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Sweep now rather than at the next poll (new jobs were queued)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep_once()
            except Exception:  # broker or database away: the rows stay due, sweep again
                log.exception("publishing due rows failed; retrying")
            self._wake.wait(self._poll_interval_s)
            self._wake.clear()

"""Write audit records off the caller's thread: the append-only table, and the collector.

The DICOM node must never wait for its audit trail, and an audit failure must never fail the
work it describes. :meth:`AuditTrail.emit` puts a record into a bounded queue and returns; a
background thread hands each record's DICOM audit message to the syslog forwarder (if one is
configured) and writes the records to ``audit_events`` in batches, one transaction per batch.
A database that is down is retried with a backoff; a full queue drops the new record, counted
in ``/metrics`` and logged (without its contents).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from audit.codes import AuditOutcome
from audit.message import AuditMessage
from audit.syslog import Severity, SyslogForwarder
from db.models import Study
from db.review import AuditEvent

log = logging.getLogger(__name__)

#: Records written in one transaction at most.
BATCH_SIZE = 200
#: Attempts to write one batch before it is given up (and counted as dropped).
WRITE_ATTEMPTS = 5
_FIRST_RETRY_S = 0.5
#: How long a stop waits at most for the collector to take the messages still queued.
FORWARDER_STOP_S = 3.0


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An audit event: its DICOM audit message and the columns of its ``audit_events`` row.

    ``detail`` never holds patient data; the participant identifiers go to their own columns.
    ``object_type``/``object_id`` default to the study's internal id when the Study Instance
    UID names a study the database holds.
    """

    message: AuditMessage
    actor: str
    client_ip: str | None = None
    detail: str | None = None
    study_instance_uid: str | None = None
    patient_id: str | None = None
    instance_count: int | None = None
    object_type: str | None = None
    object_id: str | None = None

    def row(self, study_id: int | None) -> AuditEvent:
        message = self.message
        event_type = message.event_types[0] if message.event_types else None
        object_type, object_id = self.object_type, self.object_id
        if object_type is None and study_id is not None:
            object_type, object_id = "study", str(study_id)
        return AuditEvent(
            occurred_at=message.occurred_at,
            event_id_code=message.event_id.value,
            event_id_meaning=message.event_id.meaning,
            event_type_code=event_type.value if event_type else None,
            event_type_meaning=event_type.meaning if event_type else None,
            action=message.action,
            outcome=int(message.outcome),
            actor=self.actor[:96],
            client_ip=self.client_ip[:64] if self.client_ip else None,
            object_type=object_type,
            object_id=object_id[:64] if object_id else None,
            detail=self.detail[:256] if self.detail else None,
            study_instance_uid=self.study_instance_uid,
            patient_id=self.patient_id[:64] if self.patient_id else None,
            instance_count=self.instance_count,
        )


@dataclass(frozen=True, slots=True)
class TrailCounts:
    """What the writer did so far (for ``/metrics``)."""

    written: int
    dropped: int
    write_errors: int
    queued: int


class AuditTrail:
    """The bounded queue of audit records and the thread that writes and forwards them."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        queue_size: int,
        forwarder: SyslogForwarder | None = None,
    ) -> None:
        self._sessions = sessions
        self.forwarder = forwarder
        self._queue: queue.Queue[AuditRecord] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._written = self._dropped = self._errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    def emit(self, record: AuditRecord) -> bool:
        """Queue ``record``; never blocks or raises. ``False`` if the queue was full (counted)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._count_dropped(1, "audit queue full")
            return False
        return True

    def counts(self) -> TrailCounts:
        with self._lock:
            return TrailCounts(self._written, self._dropped, self._errors, self._queue.qsize())

    def start(self) -> None:
        if self.forwarder is not None:
            self.forwarder.start()
        self._thread.start()

    def idle(self) -> bool:
        """Whether every record emitted so far has been handled (written or given up)."""
        return self._queue.unfinished_tasks == 0

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (within ``timeout_s``), stop, then stop the forwarder."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.1))
        left = self._queue.qsize()
        if left:
            self._count_dropped(left, "audit writer stopped")
        if self.forwarder is not None:  # a dead collector delays a shutdown a little only
            self.forwarder.stop(min(max(deadline - time.monotonic(), 0.5), FORWARDER_STOP_S))

    # The writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                if self._stop.is_set():
                    return
                continue
            try:
                self._forward(batch)
                self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _take_batch(self) -> list[AuditRecord]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < BATCH_SIZE:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _forward(self, batch: list[AuditRecord]) -> None:
        if self.forwarder is None:
            return
        for record in batch:
            message = record.message
            severity = (
                Severity.NOTICE if message.outcome is AuditOutcome.SUCCESS else Severity.WARNING
            )
            try:
                body = message.to_xml()
            except ValueError as exc:  # a value XML cannot carry (a control character)
                log.error("audit message %s not forwarded: %s", message.event_id.value, exc)
                continue
            self.forwarder.submit(body, occurred_at=message.occurred_at, severity=severity)

    def _write(self, batch: list[AuditRecord]) -> None:
        delay = _FIRST_RETRY_S
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with self._sessions() as session, session.begin():
                    studies = self._study_ids(session, batch)
                    session.add_all(
                        record.row(studies.get(record.study_instance_uid or "")) for record in batch
                    )
            except SQLAlchemyError as exc:
                with self._lock:
                    self._errors += 1
                log.warning(
                    "audit trail write failed (attempt %d of %d): %s",
                    attempt,
                    WRITE_ATTEMPTS,
                    type(exc).__name__,
                )
                # Stopping skips the waits, not the attempts: nothing is given up early.
                if attempt < WRITE_ATTEMPTS and not self._stop.is_set():
                    self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            with self._lock:
                self._written += len(batch)
            return
        self._count_dropped(len(batch), "audit trail unwritable")

    @staticmethod
    def _study_ids(session: Session, batch: list[AuditRecord]) -> dict[str, int]:
        uids = {r.study_instance_uid for r in batch if r.study_instance_uid and not r.object_type}
        if not uids:
            return {}
        rows = session.execute(
            select(Study.study_instance_uid, Study.id).where(Study.study_instance_uid.in_(uids))
        ).all()
        return {uid: study_id for uid, study_id in rows}

    def _count_dropped(self, count: int, why: str) -> None:
        with self._lock:
            before = self._dropped
            self._dropped += count
            after = self._dropped
        if before == 0 or before // 1000 != after // 1000:
            log.error("%s: %d audit records dropped so far", why, after)

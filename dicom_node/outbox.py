"""The outbox: deliver stored result objects to their destinations, surviving any failure.

Every delivery is an ``outbox`` row (:class:`db.results.OutboxEntry`). :class:`OutboxWorker`
takes due rows in batches, opens one association per destination per batch proposing only the
presentation contexts the batch needs, sends each file as stored, and records what the peer said:

- delivered (Success, or a warning) -> ``sent``;
- a failure a retry cannot fix (the peer does not support the SOP class, refuses the data set,
  cannot understand it, or we are not authorised) -> ``dead_letter`` at once;
- anything transient (association refused or aborted, connection refused, timeouts, the peer
  out of resources) -> ``pending`` again after an exponential backoff, and ``dead_letter``
  after ``max_attempts`` attempts or ``max_age_s`` seconds.

The queue itself is :data:`OUTBOX`, a fenced :class:`db.queue.Queue` like the job queue: the
sender renews its rows' leases while it sends (a heartbeat), and records each outcome with its
claim's fencing token, so a sender whose lease lapsed cannot overwrite the outcome of the sender
that retook the row. State lives only in the database: a row left ``sending`` by a process that
died is retaken once its lease lapses, so nothing is lost across restarts. Result UIDs are
deterministic, so a resend after a lost response reaches the PACS as the same instance, never a
second copy.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config
from pynetdicom.association import Association
from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Destination, OutboxSettings, TlsSettings
from db.base import utcnow
from db.engine import reading, writing
from db.models import Study
from db.queue import MAX_ERROR_LENGTH, Claim, Queue, QueueStates, RetryPolicy
from db.results import OutboxEntry, OutboxState, ResultObject
from dicom_node.peer import request_association
from dicom_node.storage import InstanceStore
from dicom_node.tls import client_context

log = logging.getLogger(__name__)


class DeliveryOutcome(StrEnum):
    """What one attempt to deliver an object means for its outbox row."""

    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


class StoreResponseStatus(IntEnum):
    """C-STORE response statuses a peer may return (PS3.4 B.2.3, PS3.7 Annex C).

    Ranges (``A7xx``, ``A9xx``, ``Cxxx``, ``Bxxx``) are represented by their first value; use
    :func:`classify_store_status` rather than comparing with these directly.
    """

    SUCCESS = 0x0000
    #: Warning: the peer coerced data elements.
    COERCION_OF_DATA_ELEMENTS = 0xB000
    #: Warning: the peer discarded data elements.
    ELEMENTS_DISCARDED = 0xB006
    #: Warning: the data set does not match the SOP class (stored anyway).
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    #: Warning (PS3.7 C.4.2): attribute list error.
    ATTRIBUTE_LIST_ERROR = 0x0107
    #: Warning (PS3.7 C.4.2): attribute value out of range.
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    #: Failure: processing failure (often a passing fault of the peer).
    PROCESSING_FAILURE = 0x0110
    #: Failure: the peer already holds this SOP Instance UID (our UIDs are deterministic).
    DUPLICATE_SOP_INSTANCE = 0x0111
    #: Failure: invalid object instance.
    INVALID_OBJECT_INSTANCE = 0x0117
    #: Failure: no such SOP class.
    NO_SUCH_SOP_CLASS = 0x0118
    #: Failure: SOP class not supported.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: Failure: not authorised.
    NOT_AUTHORIZED = 0x0124
    #: Failure: duplicate invocation.
    DUPLICATE_INVOCATION = 0x0210
    #: Failure: unrecognised operation.
    UNRECOGNIZED_OPERATION = 0x0211
    #: Failure: mistyped argument.
    MISTYPED_ARGUMENT = 0x0212
    #: Failure: resource limitation.
    RESOURCE_LIMITATION = 0x0213
    #: Refused: out of resources (``A7xx``).
    OUT_OF_RESOURCES = 0xA700
    #: Error: data set does not match SOP class (``A9xx``).
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Error: cannot understand (``Cxxx``).
    CANNOT_UNDERSTAND = 0xC000
    #: Cancelled.
    CANCEL = 0xFE00


_DELIVERED_STATUSES = frozenset(
    {
        StoreResponseStatus.SUCCESS,
        StoreResponseStatus.ATTRIBUTE_LIST_ERROR,
        StoreResponseStatus.ATTRIBUTE_VALUE_OUT_OF_RANGE,
        StoreResponseStatus.DUPLICATE_SOP_INSTANCE,
    }
)
_PERMANENT_STATUSES = frozenset(
    {
        StoreResponseStatus.INVALID_OBJECT_INSTANCE,
        StoreResponseStatus.NO_SUCH_SOP_CLASS,
        StoreResponseStatus.SOP_CLASS_NOT_SUPPORTED,
        StoreResponseStatus.NOT_AUTHORIZED,
        StoreResponseStatus.UNRECOGNIZED_OPERATION,
        StoreResponseStatus.MISTYPED_ARGUMENT,
    }
)


def classify_store_status(status: int) -> DeliveryOutcome:
    """What a C-STORE response status means for delivery.

    Success and warnings (``Bxxx``, 0107, 0116) are delivered; so is 0111 (the peer already
    holds this SOP Instance UID, and our UIDs name one content). ``A9xx``, ``Cxxx`` and the
    general failures a resend cannot change (0117, 0118, 0122, 0124, 0211, 0212) are dead
    letters. ``A7xx`` (out of resources), 0110, 0210, 0213, FE00 and statuses not defined by
    the standard are retried.

    Parameters
    ----------
    status
        The Status (0000,0900) of the C-STORE response (PS3.7 9.1.1.1.9, Annex C).
    """
    if not 0 <= status <= 0xFFFF:
        raise ValueError(f"a DIMSE status is 16 bits, got {status}")
    if status in _DELIVERED_STATUSES or 0xB000 <= status <= 0xBFFF:
        return DeliveryOutcome.DELIVERED
    if status in _PERMANENT_STATUSES or 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF:
        return DeliveryOutcome.DEAD_LETTER
    return DeliveryOutcome.RETRY


# Queue queries --------------------------------------------------------------------------------
def _identity_conflict() -> ColumnElement[bool]:
    # Deliveries of a study whose patient identity is in conflict wait, untouched.
    return OutboxEntry.result_object_id.in_(
        select(ResultObject.id)
        .join(Study, Study.id == ResultObject.study_id)
        .where(Study.identity_conflict.is_(True))
    )


#: The delivery queue: pending → sending → sent, or dead_letter.
OUTBOX = Queue(
    OutboxEntry,
    QueueStates(
        OutboxState.PENDING, OutboxState.SENDING, OutboxState.SENT, OutboxState.DEAD_LETTER
    ),
    due="next_attempt_at",
    held=_identity_conflict,
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed outbox row, its claim's fencing token, and what is needed to send its object."""

    outbox_id: int
    destination: str
    attempt: int
    sop_class_uid: str
    sop_instance_uid: str
    storage_path: str
    token: int = 0

    @property
    def claim(self) -> Claim:
        return Claim(self.outbox_id, self.token, self.attempt)


def claim_due(
    sessions: sessionmaker[Session], *, limit: int, lease_s: float, now: datetime | None = None
) -> list[Delivery]:
    """Take up to ``limit`` due rows (pending and due, or sending with a lapsed lease).

    Each claimed row becomes ``sending`` with a lease, a new fencing token and one more attempt
    counted, so a crash while sending still counts towards ``max_attempts``. Rows of a study
    whose patient identity is in conflict wait, untouched, until the conflict is resolved.
    """
    return _claim(sessions, limit=limit, lease_s=lease_s, now=now, row_id=None)


def claim_one(
    sessions: sessionmaker[Session], outbox_id: int, *, lease_s: float, now: datetime | None = None
) -> Delivery | None:
    """Take one named row if it is due (for a message that carries only the row's id)."""
    claimed = _claim(sessions, limit=1, lease_s=lease_s, now=now, row_id=outbox_id)
    return claimed[0] if claimed else None


def _claim(
    sessions: sessionmaker[Session],
    *,
    limit: int,
    lease_s: float,
    now: datetime | None,
    row_id: int | None,
) -> list[Delivery]:
    if not OUTBOX.any_due(sessions, now=now, row_id=row_id):
        return []  # an idle poll does not take the write lock
    with writing(sessions) as session:
        claims = OUTBOX.claim_in(session, lease_s=lease_s, limit=limit, now=now, row_id=row_id)
        if not claims:
            return []
        found = {
            found_id: (destination, obj)
            for found_id, destination, obj in session.execute(
                select(OutboxEntry.id, OutboxEntry.destination, ResultObject)
                .join(ResultObject, ResultObject.id == OutboxEntry.result_object_id)
                .where(OutboxEntry.id.in_([c.id for c in claims]))
            )
        }
        return [
            Delivery(
                outbox_id=c.id,
                destination=found[c.id][0],
                attempt=c.attempt,
                sop_class_uid=found[c.id][1].sop_class_uid,
                sop_instance_uid=found[c.id][1].sop_instance_uid,
                storage_path=found[c.id][1].storage_path,
                token=c.token,
            )
            for c in claims
        ]


def record_outcome(
    sessions: sessionmaker[Session],
    delivery: Delivery,
    outcome: DeliveryOutcome,
    settings: OutboxSettings,
    *,
    status: int | None = None,
    error: str | None = None,
    now: datetime | None = None,
) -> OutboxState:
    """Write the result of one attempt of a claimed row; returns the row's state afterwards.

    A retry becomes a dead letter once the row has used ``max_attempts`` attempts or has been
    queued for ``max_age_s`` seconds (since queued, or since an administrator's retry). The
    change carries the claim's fencing token: when the row was retaken by another sender after
    this one's lease lapsed, nothing is written and the state the other sender left is returned.
    """
    now = now or utcnow()
    claim = delivery.claim
    values: dict[str, object] = {"last_status": status, "updated_at": now}
    state: StrEnum | None
    if outcome is DeliveryOutcome.DELIVERED:
        values["last_error"] = error[:MAX_ERROR_LENGTH] if error else None
        values["sent_at"] = now
        done = OUTBOX.complete(sessions, claim, now=now, values=values)
        state = OutboxState.SENT if done else None
    else:
        state = OUTBOX.fail(
            sessions,
            claim,
            error or "no reason given",
            RetryPolicy(
                backoff_base_s=settings.backoff_base_s,
                backoff_max_s=settings.backoff_max_s,
                max_attempts=settings.max_attempts,
                max_age_s=settings.max_age_s,
            ),
            permanent=outcome is DeliveryOutcome.DEAD_LETTER,
            now=now,
            values=values,
        )
    if state is not None:
        return OutboxState(state)
    with reading(sessions) as session:
        current = session.scalar(select(OutboxEntry.state).where(OutboxEntry.id == claim.id))
    if current is None:
        raise LookupError(f"outbox row {claim.id} does not exist")
    log.warning("outbox %d attempt %d: lease lost, outcome not recorded", claim.id, claim.attempt)
    return OutboxState(current)


# Sending --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What happened to one delivery in one association."""

    delivery: Delivery
    outcome: DeliveryOutcome
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Prepared:
    delivery: Delivery
    path: Path
    transfer_syntax: str


def _transfer_syntax(path: Path) -> str:
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if not syntax:
        raise InvalidDicomError("no transfer syntax in the file meta")
    return syntax


def send_to_destination(
    destination: Destination,
    deliveries: Sequence[Delivery],
    store: InstanceStore,
    *,
    calling_ae_title: str,
    timeout_s: float,
    maximum_pdu_size: int = 0,
    tls_context: ssl.SSLContext | None = None,
) -> list[AttemptResult]:
    """Send the stored files of ``deliveries`` over one association to ``destination``.

    Only the presentation contexts needed are proposed: each object's SOP class with its stored
    file's transfer syntax (PS3.8 9.3.2.2), so files go out byte for byte as stored. A
    destination with ``tls`` is reached through ``tls_context``
    (:func:`dicom_node.tls.client_context`).
    """
    if destination.tls and tls_context is None:
        raise ValueError(f"destination {destination.name} needs TLS but no TLS context was given")
    results: list[AttemptResult] = []
    prepared: list[_Prepared] = []
    for delivery in deliveries:
        try:
            path = store.absolute(delivery.storage_path)
            prepared.append(_Prepared(delivery, path, _transfer_syntax(path)))
        except (OSError, InvalidDicomError, ValueError) as exc:
            results.append(
                AttemptResult(
                    delivery,
                    DeliveryOutcome.DEAD_LETTER,
                    error=f"stored result file unusable: {type(exc).__name__}",
                )
            )
    if not prepared:
        return results

    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.maximum_pdu_size = maximum_pdu_size
    for sop_class, syntax in sorted(
        {(p.delivery.sop_class_uid, p.transfer_syntax) for p in prepared}
    ):
        ae.add_requested_context(sop_class, [syntax])

    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # stream the file's bytes, never re-encode
    try:
        tls_args = None
        if destination.tls and tls_context is not None:
            tls_args = (tls_context, destination.tls_server_name or destination.host)
        request = request_association(
            ae, destination.host, destination.port, destination.ae_title, tls_args=tls_args
        )
        assoc = request.assoc
        if not request.established and assoc.rejected_contexts and not assoc.accepted_contexts:
            # The peer answered but accepts none of the contexts: a resend cannot change that.
            results.extend(_send_one(assoc, p, accepted=set()) for p in prepared)
            return results
        if not request.established:
            reason = request.failure("destination")
            results.extend(
                AttemptResult(p.delivery, DeliveryOutcome.RETRY, error=reason) for p in prepared
            )
            return results
        try:
            accepted = {
                (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts
            }
            for index, item in enumerate(prepared):
                if not assoc.is_established:
                    results.extend(
                        AttemptResult(
                            rest.delivery, DeliveryOutcome.RETRY, error="association aborted"
                        )
                        for rest in prepared[index:]
                    )
                    break
                results.append(_send_one(assoc, item, accepted))
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return results


def _send_one(assoc: Association, item: _Prepared, accepted: set[tuple[str, str]]) -> AttemptResult:
    delivery = item.delivery
    if (delivery.sop_class_uid, item.transfer_syntax) not in accepted:
        return AttemptResult(
            delivery,
            DeliveryOutcome.DEAD_LETTER,
            error=(
                f"destination accepts no presentation context for SOP class "
                f"{delivery.sop_class_uid} in transfer syntax {item.transfer_syntax}"
            ),
        )
    try:
        response = assoc.send_c_store(item.path)
    except (ValueError, AttributeError, OSError) as exc:
        return AttemptResult(delivery, DeliveryOutcome.RETRY, error=f"cannot send: {exc}")
    if not response or "Status" not in response:
        return AttemptResult(
            delivery, DeliveryOutcome.RETRY, error="no response (timeout or association aborted)"
        )
    status = int(response.Status)
    outcome = classify_store_status(status)
    error = None if outcome is DeliveryOutcome.DELIVERED else f"C-STORE status 0x{status:04X}"
    if outcome is DeliveryOutcome.DELIVERED and status != StoreResponseStatus.SUCCESS:
        error = f"delivered with warning status 0x{status:04X}"
    return AttemptResult(delivery, outcome, status=status, error=error)


# The worker -----------------------------------------------------------------------------------
class OutboxWorker:
    """A background thread that delivers due outbox rows until stopped."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: InstanceStore,
        destinations: Sequence[Destination],
        settings: OutboxSettings,
        *,
        calling_ae_title: str,
        maximum_pdu_size: int = 0,
        tls: TlsSettings | None = None,
        on_attempts: Callable[[str, Sequence[tuple[AttemptResult, OutboxState]]], None]
        | None = None,
    ) -> None:
        """``on_attempts(destination name, [(result, the row's new state)])`` is called after
        each destination's outcomes are recorded (the network audit); it must not raise."""
        self._sessions = sessions
        self._store = store
        self._destinations = {d.name: d for d in destinations}
        self._settings = settings
        self._calling_ae_title = calling_ae_title
        self._maximum_pdu_size = maximum_pdu_size
        self._tls_context: ssl.SSLContext | None = None
        if any(d.tls for d in destinations):
            self._tls_context = client_context(tls or TlsSettings())
        self._on_attempts = on_attempts
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="outbox-worker", daemon=True)

    def run_once(self) -> int:
        """Claim one batch of due rows, send it and record every outcome; returns its size."""
        claimed = claim_due(
            self._sessions, limit=self._settings.batch_size, lease_s=self._settings.lease_s
        )
        self.send_claimed(claimed)
        return len(claimed)

    def send_claimed(self, claimed: Sequence[Delivery]) -> None:
        """Send claimed rows (one association per destination), keeping their leases alive, and
        record every outcome. Also used by a distributed worker that claimed rows by id."""
        by_destination: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in claimed:
            by_destination[delivery.destination].append(delivery)
        with OUTBOX.heartbeat(
            self._sessions, [d.claim for d in claimed], lease_s=self._settings.lease_s
        ):
            for name, deliveries in by_destination.items():
                deliveries.sort(key=lambda d: d.outbox_id)
                self._deliver(name, deliveries)

    def _deliver(self, name: str, deliveries: list[Delivery]) -> None:
        recorded: list[tuple[AttemptResult, OutboxState]] = []
        for result in self._attempt(name, deliveries):
            state = record_outcome(
                self._sessions,
                result.delivery,
                result.outcome,
                self._settings,
                status=result.status,
                error=result.error,
            )
            log.log(
                logging.WARNING if state is OutboxState.DEAD_LETTER else logging.INFO,
                "outbox %d to %s attempt %d: %s%s",
                result.delivery.outbox_id,
                name,
                result.delivery.attempt,
                state.value,
                f" ({result.error})" if result.error else "",
            )
            recorded.append((result, state))
        if self._on_attempts is not None:
            self._on_attempts(name, recorded)

    def _attempt(self, name: str, deliveries: list[Delivery]) -> list[AttemptResult]:
        destination = self._destinations.get(name)
        if destination is None:
            return [
                AttemptResult(d, DeliveryOutcome.DEAD_LETTER, error="destination not configured")
                for d in deliveries
            ]
        try:
            return send_to_destination(
                destination,
                deliveries,
                self._store,
                calling_ae_title=destination.calling_ae_title or self._calling_ae_title,
                timeout_s=self._settings.association_timeout_s,
                maximum_pdu_size=self._maximum_pdu_size,
                tls_context=self._tls_context,
            )
        except Exception as exc:  # an unexpected fault of the network stack: retry the batch
            log.exception("sending to %s failed unexpectedly", name)
            error = f"unexpected {type(exc).__name__} while sending"
            return [AttemptResult(d, DeliveryOutcome.RETRY, error=error) for d in deliveries]

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look for due rows now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                handled = self.run_once()
            except SQLAlchemyError:
                log.exception("outbox unavailable; retrying")
                handled = 0
            except Exception:  # keep delivering; claimed rows are retaken when their lease lapses
                log.exception("outbox batch failed")
                handled = 0
            if handled < self._settings.batch_size:
                self._wake.wait(self._settings.poll_interval_s)
                self._wake.clear()


# Administration (used by the API) -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OutboxView:
    """One outbox row as the administration API shows it (no patient data)."""

    id: int
    destination: str
    state: OutboxState
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    updated_at: datetime
    result_object_id: int
    kind: str
    sop_instance_uid: str
    study_id: int


def list_outbox(
    sessions: sessionmaker[Session],
    state: OutboxState | None = None,
    *,
    limit: int = 100,
    offset: int = 0,
) -> list[OutboxView]:
    """Outbox rows, newest first, optionally only those in ``state``."""
    if limit < 1 or offset < 0:
        raise ValueError(f"limit must be positive and offset non-negative: {limit}, {offset}")
    query = select(OutboxEntry, ResultObject).join(ResultObject)
    if state is not None:
        query = query.where(OutboxEntry.state == state)
    query = query.order_by(OutboxEntry.id.desc()).limit(limit).offset(offset)
    with reading(sessions) as session:
        return [
            OutboxView(
                id=row.id,
                destination=row.destination,
                state=OutboxState(row.state),
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at,
                last_status=row.last_status,
                last_error=row.last_error,
                created_at=row.created_at,
                sent_at=row.sent_at,
                updated_at=row.updated_at,
                result_object_id=obj.id,
                kind=str(obj.kind),
                sop_instance_uid=obj.sop_instance_uid,
                study_id=obj.study_id,
            )
            for row, obj in session.execute(query).all()
        ]


def retry_dead_letter(sessions: sessionmaker[Session], outbox_id: int) -> bool:
    """Queue one dead letter again; returns whether the row existed and was a dead letter.

    The row starts afresh (no attempts used, its age counted from now, in ``retried_at``);
    ``created_at`` keeps when it was first queued.
    """
    return bool(OUTBOX.retry_dead(sessions, OutboxEntry.id == outbox_id))


def retry_all_dead_letters(sessions: sessionmaker[Session], destination: str | None = None) -> int:
    """Queue every dead letter (of one destination, if named) again; returns how many."""
    where = [] if destination is None else [OutboxEntry.destination == destination]
    return len(OUTBOX.retry_dead(sessions, *where))


def outbox_depths(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Number of outbox rows in each state (for metrics and health)."""
    return OUTBOX.depths(sessions)

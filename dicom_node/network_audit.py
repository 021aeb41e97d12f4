"""What the DICOM node puts on the audit trail (PS3.15 A.5.3), without slowing the network.

- Instances received: one *DICOM Instances Transferred* (110104) record per association and
  study, with the number of instances per SOP class, written when the association ends.
  EventActionCode C for new instances, R for identical resends (the node already held them),
  U for copies that replaced the stored one (``duplicate_policy = "replace"``).
- Results sent: one 110104 record per delivery batch, destination and study, EventActionCode R
  (the sender reads what it sends); delivered is outcome 0, a failure that is retried 4, one
  given up (dead letter) 8, with the reason.
- Associations refused (unknown or misaddressed AE titles, an address not allowed, a PDU that
  breaks the protocol, a failed TLS handshake): *Security Alert* (110113), type *Node
  Authentication* (110126), outcome 4, with the reason.
- The node's start and stop: *Application Activity* (110100), types 110120 and 110121.

The C-STORE handler only counts into memory (a dictionary under a lock); the records are built
when the association ends and handed to :class:`audit.trail.AuditTrail`, whose thread writes
them. No method here raises: an audit fault is logged (without patient data) and the DICOM
work goes on.
"""

from __future__ import annotations

import functools
import getpass
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ParamSpec

from pynetdicom.association import Association
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from audit.codes import AuditAction, AuditOutcome, Code, EventId, EventType, RoleId
from audit.message import (
    ActiveParticipant,
    AuditMessage,
    AuditSource,
    ParticipantObject,
    SopClassCount,
)
from audit.syslog import SyslogForwarder, tls_context
from audit.trail import AuditRecord, AuditTrail
from config.settings import Destination, Settings, SyslogTransport
from db.base import utcnow
from db.models import Study
from db.results import OutboxEntry, OutboxState, ResultObject
from dicom_node.admission import RefusedError
from dicom_node.ingest import IngestOutcome, InstanceHeader
from dicom_node.outbox import AttemptResult

log = logging.getLogger(__name__)

#: The actor of the node's own start and stop records.
NODE_ACTOR = "application:fracture-gateway-node"

_ACTION_FOR_INGEST = {
    IngestOutcome.STORED: AuditAction.CREATE,
    IngestOutcome.CONFLICT_KEPT: AuditAction.CREATE,
    IngestOutcome.IDEMPOTENT: AuditAction.READ,
    IngestOutcome.REPLACED: AuditAction.UPDATE,
}
#: A delivery's new state: sent, retried later (minor failure), or given up (serious failure).
_OUTCOME_FOR_STATE = {
    OutboxState.SENT: AuditOutcome.SUCCESS,
    OutboxState.PENDING: AuditOutcome.MINOR_FAILURE,
    OutboxState.DEAD_LETTER: AuditOutcome.SERIOUS_FAILURE,
}

_STATE_WORDS = {
    AuditOutcome.SUCCESS: "delivered",
    AuditOutcome.MINOR_FAILURE: "failed, to be retried",
    AuditOutcome.SERIOUS_FAILURE: "failed, given up",
}

P = ParamSpec("P")


def _never_raises(method: Callable[P, None]) -> Callable[P, None]:
    """Log an audit fault (its type only) instead of letting it reach the DICOM work."""

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception as exc:  # the audit never fails a C-STORE, an association or a send
            log.error("network audit %s failed: %s", method.__name__, type(exc).__name__)

    return guarded


def dicom_actor(ae_title: str) -> str:
    """The audit trail's actor for a DICOM application entity."""
    return f"dicom:{ae_title}"


@dataclass
class _StudyReceived:
    """Instances of one study received on one association, with one action code."""

    patient_id: str | None
    last_at: datetime
    sop_classes: Counter[str] = field(default_factory=Counter)


@dataclass
class _AssociationReceived:
    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    local_address: str | None
    studies: dict[tuple[str, AuditAction], _StudyReceived] = field(default_factory=dict)


class NodeAudit:
    """The node's audit events, built from what the SCP, the transport and the outbox report."""

    def __init__(
        self,
        trail: AuditTrail,
        sessions: sessionmaker[Session],
        *,
        ae_title: str,
        source: AuditSource,
        destinations: Sequence[Destination] = (),
    ) -> None:
        self.trail = trail
        self._sessions = sessions
        self._ae_title = ae_title
        self._source = source
        self._destinations = {d.name: d for d in destinations}
        self._lock = threading.Lock()
        self._open: dict[Association, _AssociationReceived] = {}

    @classmethod
    def from_settings(cls, settings: Settings, sessions: sessionmaker[Session]) -> NodeAudit:
        """The audit of this node, with a syslog forwarder when ``audit.syslog.enabled``."""
        forwarder = None
        syslog = settings.audit.syslog
        if syslog.enabled:
            tls = None
            if syslog.transport is SyslogTransport.TLS:
                tls = tls_context(syslog, settings.node.tls)
            forwarder = SyslogForwarder(syslog, tls=tls)
        trail = AuditTrail(sessions, queue_size=settings.audit.queue_size, forwarder=forwarder)
        source = AuditSource(
            settings.audit.source_id or settings.node.ae_title, settings.audit.enterprise_site_id
        )
        return cls(
            trail,
            sessions,
            ae_title=settings.node.ae_title,
            source=source,
            destinations=settings.destinations,
        )

    def start(self) -> None:
        self.trail.start()
        self.application_activity(EventType.APPLICATION_START)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Record what open associations received so far and the stop, then drain the writer."""
        with self._lock:
            still_open = list(self._open)
        for assoc in still_open:
            self.association_ended(assoc)
        self.application_activity(EventType.APPLICATION_STOP)
        self.trail.stop(timeout_s)

    # Instances received -----------------------------------------------------------------------
    @_never_raises
    def instance_received(
        self, assoc: Association, header: InstanceHeader, outcome: IngestOutcome
    ) -> None:
        """Count one stored instance of ``assoc`` (called by the C-STORE handler; memory only)."""
        action = _ACTION_FOR_INGEST.get(outcome)
        if action is None:
            return
        now = utcnow()
        with self._lock:
            received = self._open.get(assoc)
            if received is None:
                received = self._open[assoc] = _AssociationReceived(
                    calling_ae_title=str(assoc.requestor.ae_title).strip(),
                    called_ae_title=str(assoc.acceptor.ae_title).strip(),
                    peer_address=str(assoc.requestor.address),
                    local_address=str(assoc.acceptor.address or "") or None,
                )
            key = (header.study_instance_uid, action)
            study = received.studies.get(key)
            if study is None:
                study = received.studies[key] = _StudyReceived(header.patient_id, now)
            study.last_at = now
            study.patient_id = study.patient_id or header.patient_id
            study.sop_classes[header.sop_class_uid] += 1

    @_never_raises
    def association_ended(self, assoc: Association) -> None:
        """Emit one record per study the association delivered (called when it has ended)."""
        with self._lock:
            received = self._open.pop(assoc, None)
        if received is None:
            return
        source = ActiveParticipant.dicom_node(
            received.calling_ae_title,
            role=RoleId.SOURCE,
            is_requestor=True,
            address=received.peer_address,
        )
        destination = ActiveParticipant.dicom_node(
            received.called_ae_title or self._ae_title,
            role=RoleId.DESTINATION,
            is_requestor=False,
            address=received.local_address,
        )
        for (study_uid, action), study in received.studies.items():
            count = sum(study.sop_classes.values())
            objects = [ParticipantObject.study(study_uid, _sop_counts(study.sop_classes))]
            if study.patient_id:
                objects.append(ParticipantObject.patient(study.patient_id))
            message = AuditMessage(
                event_id=EventId.INSTANCES_TRANSFERRED,
                action=action,
                outcome=AuditOutcome.SUCCESS,
                occurred_at=study.last_at,
                participants=(source, destination),
                source=self._source,
                objects=tuple(objects),
            )
            self.trail.emit(
                AuditRecord(
                    message,
                    actor=dicom_actor(received.calling_ae_title),
                    client_ip=received.peer_address,
                    detail=(
                        f"{count} instances received from {received.calling_ae_title}@"
                        f"{received.peer_address} by {destination.user_id}"
                    ),
                    study_instance_uid=study_uid,
                    patient_id=study.patient_id,
                    instance_count=count,
                )
            )

    # Refusals ---------------------------------------------------------------------------------
    @_never_raises
    def association_refused(self, host: str, refusal: RefusedError) -> None:
        """A connection refused before admission (A-ASSOCIATE-RJ or A-ABORT)."""
        if not refusal.security_alert:
            return
        self._security_alert(host, refusal.reason, calling_ae_title=refusal.calling_ae_title)

    @_never_raises
    def tls_failed(self, host: str, reason: str) -> None:
        """A TLS handshake that failed (no or an untrusted certificate, an old version)."""
        self._security_alert(host, f"TLS handshake failed: {reason}")

    @_never_raises
    def association_aborted(self, assoc: Association, reason: str) -> None:
        """An admitted association aborted by us for breaking the protocol."""
        self._security_alert(
            str(assoc.requestor.address),
            reason,
            calling_ae_title=str(assoc.requestor.ae_title).strip() or None,
        )

    def _security_alert(
        self, host: str, reason: str, *, calling_ae_title: str | None = None
    ) -> None:
        peer = ActiveParticipant(
            user_id=calling_ae_title or host,
            is_requestor=True,
            alternative_user_id=f"AETITLES={calling_ae_title}" if calling_ae_title else None,
            network_access_point=host,
        )
        reporter = ActiveParticipant.dicom_node(
            self._ae_title, role=RoleId.APPLICATION, is_requestor=False
        )
        message = AuditMessage(
            event_id=EventId.SECURITY_ALERT,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.MINOR_FAILURE,
            occurred_at=utcnow(),
            participants=(peer, reporter),
            source=self._source,
            event_types=(EventType.NODE_AUTHENTICATION,),
            outcome_description=reason,
            objects=(ParticipantObject.node(host),),
        )
        who = f"{calling_ae_title}@{host}" if calling_ae_title else host
        self.trail.emit(
            AuditRecord(
                message,
                actor=dicom_actor(calling_ae_title) if calling_ae_title else "anonymous",
                client_ip=host,
                detail=f"association from {who} refused: {reason}",
                object_type="node",
                object_id=host,
            )
        )

    # Results sent -----------------------------------------------------------------------------
    @_never_raises
    def deliveries_attempted(
        self, destination_name: str, attempts: Sequence[tuple[AttemptResult, OutboxState]]
    ) -> None:
        """One record per study and outcome of a batch sent to one destination (outbox thread).

        The outcome is that of the delivery after the attempt: sent (0), to be retried (4) or
        given up (8); a row another sender settled meanwhile counts as retried.
        """
        if not attempts:
            return
        destination = self._destinations.get(destination_name)
        studies = self._studies_of(r.delivery.outbox_id for r, _ in attempts)
        groups: dict[tuple[int, AuditOutcome], list[AttemptResult]] = {}
        for result, state in attempts:
            study_id = studies.get(result.delivery.outbox_id, (0, "", None))[0]
            outcome = _OUTCOME_FOR_STATE.get(state, AuditOutcome.MINOR_FAILURE)
            groups.setdefault((study_id, outcome), []).append(result)
        calling = self._ae_title
        called, address = destination_name, None
        if destination is not None:
            calling = destination.calling_ae_title or self._ae_title
            called, address = destination.ae_title, destination.host
        source = ActiveParticipant.dicom_node(calling, role=RoleId.SOURCE, is_requestor=True)
        target = ActiveParticipant.dicom_node(
            called, role=RoleId.DESTINATION, is_requestor=False, address=address
        )
        for (study_id, audit_outcome), group in groups.items():
            _, study_uid, patient_id = studies.get(group[0].delivery.outbox_id, (0, "", None))
            sop_classes = Counter(r.delivery.sop_class_uid for r in group)
            objects = []
            if study_uid:
                objects.append(ParticipantObject.study(study_uid, _sop_counts(sop_classes)))
            if patient_id:
                objects.append(ParticipantObject.patient(patient_id))
            error = next((r.error for r in group if r.error), None)
            message = AuditMessage(
                event_id=EventId.INSTANCES_TRANSFERRED,
                action=AuditAction.READ,
                outcome=audit_outcome,
                occurred_at=utcnow(),
                participants=(source, target),
                source=self._source,
                outcome_description=None if audit_outcome is AuditOutcome.SUCCESS else error,
                objects=tuple(objects),
            )
            self.trail.emit(
                AuditRecord(
                    message,
                    actor=dicom_actor(calling),
                    client_ip=address,
                    detail=(
                        f"{len(group)} result objects to {destination_name} "
                        f"({called}@{address}): {_STATE_WORDS[audit_outcome]}"
                    ),
                    study_instance_uid=study_uid or None,
                    patient_id=patient_id,
                    instance_count=len(group),
                    object_type="study" if study_id else None,
                    object_id=str(study_id) if study_id else None,
                )
            )

    def _studies_of(self, outbox_ids: Iterator[int]) -> dict[int, tuple[int, str, str | None]]:
        """Outbox row id -> (study id, Study Instance UID, Patient ID)."""
        with self._sessions() as session:
            rows = session.execute(
                select(OutboxEntry.id, Study.id, Study.study_instance_uid, Study.patient_id)
                .join(ResultObject, ResultObject.id == OutboxEntry.result_object_id)
                .join(Study, Study.id == ResultObject.study_id)
                .where(OutboxEntry.id.in_(list(outbox_ids)))
            ).all()
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    # Start and stop ---------------------------------------------------------------------------
    @_never_raises
    def application_activity(self, event_type: Code) -> None:
        """The node's start (110120) or stop (110121), with who started it."""
        application = ActiveParticipant.dicom_node(
            self._ae_title, role=RoleId.APPLICATION, is_requestor=False
        )
        launcher = ActiveParticipant(
            user_id=_os_user(), is_requestor=True, roles=(RoleId.APPLICATION_LAUNCHER,)
        )
        message = AuditMessage(
            event_id=EventId.APPLICATION_ACTIVITY,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.SUCCESS,
            occurred_at=utcnow(),
            participants=(application, launcher),
            source=self._source,
            event_types=(event_type,),
        )
        self.trail.emit(AuditRecord(message, actor=NODE_ACTOR, detail=event_type.meaning))


def _sop_counts(counts: Counter[str]) -> list[SopClassCount]:
    return [SopClassCount(uid, n) for uid, n in sorted(counts.items())]


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the process's uid (some containers)
        return "unknown"

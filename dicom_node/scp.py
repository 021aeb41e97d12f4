"""The C-STORE / C-ECHO SCP: persist, record, acknowledge. Never analyse here.

Handlers are thin and get their dependencies bound at registration (``evt_handlers`` with
arguments); every exception becomes a named :class:`StoreStatus` in one place.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from dicom_node.activity import IngestActivity
from dicom_node.conformance import (
    ACCEPTED_TRANSFER_SYNTAXES,
    RADIOGRAPH_SOP_CLASSES,
    VERIFICATION_SOP_CLASS,
    StoreStatus,
)
from dicom_node.dimse_stream import take_received
from dicom_node.ingest import IngestRefusedError, ingest_encoded, ingest_received
from dicom_node.netlog import quiet_peer_faults
from dicom_node.network_audit import NodeAudit
from dicom_node.storage import InstanceStore, StorageError
from dicom_node.tls import server_context
from dicom_node.transport import GuardedAssociationServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreContext:
    """Everything the C-STORE handler needs, bound once at start-up."""

    settings: Settings
    store: InstanceStore
    sessions: sessionmaker[Session]
    #: Counts each stored instance for the association's audit record (None: no audit).
    audit: NodeAudit | None = None
    #: Told of every P-DATA received, so that background work can yield to ingest.
    activity: IngestActivity | None = None


def storage_contexts(settings: Settings) -> list[PresentationContext]:
    """Presentation contexts we accept: Verification and the storage SOP classes."""
    from pynetdicom import AllStoragePresentationContexts

    contexts = [build_context(VERIFICATION_SOP_CLASS)]
    for cx in AllStoragePresentationContexts:
        sop_class = str(cx.abstract_syntax)
        if settings.node.reject_out_of_scope and sop_class not in RADIOGRAPH_SOP_CLASSES:
            continue
        contexts.append(build_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES)))
    return contexts


def handle_store(event: Event, ctx: StoreContext) -> int:
    """Store the instance durably and record it; only then answer Success."""
    request = cast(C_STORE, event.request)
    received = take_received(event)
    ingest = partial(
        ingest_encoded if received is None else ingest_received,
        transfer_syntax=str(event.context.transfer_syntax),
        sop_class_uid=str(request.AffectedSOPClassUID),
        sop_instance_uid=str(request.AffectedSOPInstanceUID),
        calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
        duplicate_policy=ctx.settings.node.duplicate_policy,
    )
    try:
        if received is not None:  # written to storage while it arrived
            outcome, header = ingest(ctx.sessions, ctx.store, received)
        else:  # a small data set, complete in its first P-DATA, is kept in memory
            buffer = request.DataSet.getbuffer()  # type: ignore[union-attr]
            outcome, header = ingest(ctx.sessions, ctx.store, buffer)
    except IngestRefusedError as refusal:
        log.warning("C-STORE refused with %s: %s", refusal.status.name, refusal.reason)
        return int(refusal.status)
    except StorageError as exc:
        level = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "I/O error"
        log.error("C-STORE failed, %s: %s", level, exc.strerror)
        return int(StoreStatus.OUT_OF_RESOURCES)
    except OperationalError as exc:
        log.error("C-STORE failed, database unavailable: %s", type(exc.orig).__name__)
        return int(StoreStatus.OUT_OF_RESOURCES)
    except Exception as exc:  # the one place an unexpected error becomes a status
        log.error("C-STORE failed unexpectedly: %s", type(exc).__name__)
        return int(StoreStatus.PROCESSING_FAILURE)
    if ctx.audit is not None:  # memory only; the record is written when the association ends
        ctx.audit.instance_received(event.assoc, header, outcome)
    log.debug("C-STORE answered Success: %s", outcome.value)
    return int(StoreStatus.SUCCESS)


def build_ae(settings: Settings) -> AE:
    """The application entity with our timeouts, limits and accepted contexts."""
    quiet_peer_faults()
    ae = AE(ae_title=settings.node.ae_title)
    ae.acse_timeout = settings.node.acse_timeout
    ae.dimse_timeout = settings.node.dimse_timeout
    ae.network_timeout = settings.node.network_timeout
    ae.maximum_associations = settings.node.max_associations
    ae.maximum_pdu_size = settings.node.maximum_pdu_size
    ae.require_called_aet = True
    ae.supported_contexts = storage_contexts(settings)
    return ae


def start_scp(
    settings: Settings, ctx: StoreContext, *, port: int | None = None
) -> GuardedAssociationServer:
    """Start listening in background threads; returns the server (``.shutdown()`` to stop).

    Connections are admitted by :mod:`dicom_node.admission` (AE titles and addresses checked
    before an association slot is taken) and PDU reads are bounded (:mod:`dicom_node.transport`).
    With ``node.tls.enabled`` the listener speaks TLS only, the handshake in each connection's
    own thread under the ARTIM timer. With ``ctx.audit``, instances received and associations
    refused are audited (:mod:`dicom_node.network_audit`).
    """
    ae = build_ae(settings)
    handlers: list[Any] = [(evt.EVT_C_STORE, handle_store, [ctx])]
    address = (settings.node.bind_address, settings.node.port if port is None else port)
    tls = server_context(settings.node.tls) if settings.node.tls.enabled else None
    server = ae.make_server(
        address,
        ssl_context=tls,
        evt_handlers=handlers,
        server_class=GuardedAssociationServer,
        settings=settings,
        audit=ctx.audit,
        store=ctx.store,
        activity=ctx.activity,
    )
    assert isinstance(server, GuardedAssociationServer)
    thread = threading.Thread(target=server.serve_forever, name="scp-acceptor", daemon=True)
    thread.start()
    ae._servers.append(server)  # so ae.shutdown() stops it too, as start_server() does
    return server

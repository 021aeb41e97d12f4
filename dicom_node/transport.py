"""pynetdicom's association server, with reads bounded and admission before any association.

Why this module overrides library internals: pynetdicom (checked against 3.0.4) trusts the peer.

* ``DULServiceProvider._read_pdu_data`` reads a PDU's 6-byte header, then calls
  ``AssociationSocket.recv(length)`` with the length the peer declared, which appends to one
  ``bytearray`` until that many bytes arrived: a header declaring 0xFFFFFFFF followed by junk
  grows the process by whatever the peer sends, before any AE title is checked.
  :class:`BoundedAssociationSocket` checks the declared length against the bound for its PDU
  type (:func:`dicom_node.pdu.length_limit`) when the body is asked for; a longer one is refused
  with an A-ABORT and the connection closed without reading it.
* ``RequestHandler.handle`` creates an ``Association`` thread for every TCP connection, and
  ``ACSE`` counts every such thread against ``maximum_associations``: sixteen connections that
  send nothing lock every sender out (A-ASSOCIATE-RJ, local limit) until the ACSE timeout.
  :class:`GuardedRequestHandler` first reads and checks the A-ASSOCIATE-RQ itself
  (:mod:`dicom_node.admission`) and creates the ``Association`` only for an admitted request,
  handing it the bytes already read through the socket (``prefix``).
* ``AssociationServer.get_request`` does the TLS handshake in the accept loop, so one idle TLS
  client stalls every other sender. :class:`GuardedAssociationServer` accepts plain sockets and
  the handshake happens in the connection's own thread, under the ARTIM deadline.

Three more for speed, not safety: PDU bodies are received into one buffer (``recv_into``)
instead of 4 KiB appends; while a C-STORE data set arrives, ``ready`` waits on the socket for the
next PDU instead of letting the DUL sleep a poll interval, and the data set's own P-DATA-TF PDUs
go straight to it (``BoundedAssociationSocket._stream_data_pdus``) instead of through the DUL's
decoding and state machine; each accepted association's DIMSE provider writes data sets to
storage as they arrive (:mod:`dicom_node.dimse_stream`).

The override points are ``RequestHandler._create_association`` (copied, with our socket class
and DIMSE provider), ``AssociationSocket.ready`` and the call pattern of ``_read_pdu_data``
(``recv(6)`` then ``recv(length)``). The test
``tests/dicom_node/test_transport_guard.py`` pins the source of every pynetdicom function this
module relies on and fails when one changes, so an upgrade is re-checked here first.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import time
from copy import deepcopy
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from config.settings import Settings
from dicom_node.activity import IngestActivity
from dicom_node.admission import (
    Admission,
    AdmissionLimits,
    ConnectionEndedError,
    RefusedError,
    check_request,
    read_associate_rq,
    refuse,
)
from dicom_node.dimse_stream import StreamingDIMSE
from dicom_node.pdu import (
    HEADER_LENGTH,
    LOCAL_LIMIT_EXCEEDED,
    AbortReason,
    PduHeader,
    PduType,
    abort_pdu,
    length_limit,
)
from dicom_node.reactor import ReactiveAssociation
from dicom_node.storage import InstanceStore

if TYPE_CHECKING:
    from dicom_node.network_audit import NodeAudit

log = logging.getLogger(__name__)

#: How long the DUL waits on the socket for the next fragment of a data set being received.
_NEXT_FRAGMENT_WAIT_S = 0.01

#: The DUL state in which P-DATA flows (PS3.8 9.2): "data transfer".
_DATA_TRANSFER_STATE = "Sta6"

#: pynetdicom's acceptor mode name (``pynetdicom._globals.MODE_ACCEPTOR``).
_MODE_ACCEPTOR = "acceptor"


class BoundedAssociationSocket(AssociationSocket):
    """An acceptor's socket that replays the request already read and bounds every PDU read.

    Parameters
    ----------
    prefix
        Bytes the gate already read from the connection (the A-ASSOCIATE-RQ); ``recv`` returns
        them before reading the socket.
    maximum_pdu_size
        The "maximum length received" we announce: the bound for P-DATA-TF PDUs.
    linger_s
        How long to wait for the peer to close after an A-ABORT (Sta13, PS3.8 9.2).
    audit
        Where a PDU refused for its length is reported as a security alert.
    """

    def __init__(
        self,
        assoc: Association,
        client_socket: socket.socket,
        *,
        prefix: bytes | bytearray,
        maximum_pdu_size: int,
        linger_s: float,
        audit: NodeAudit | None = None,
    ) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._audit = audit
        self._prefix = bytearray(prefix)
        self._maximum_pdu_size = maximum_pdu_size
        self._linger_s = linger_s
        self._header: PduHeader | None = None
        #: The body of the PDU whose header was returned last, when it was read ahead.
        self._body: bytearray | None = None

    @property
    def ready(self) -> bool:
        """Whether a PDU can be read; while a data set arrives, wait briefly for the next one.

        pynetdicom's DUL polls this without waiting and sleeps a millisecond (often more on a
        busy machine) when nothing is there: about a tenth of a 10 MB image's receive time
        at 64 KiB PDUs. In the middle of a data set the peer owes us its next fragment and we
        have nothing to send, so waiting on the socket instead costs nothing and wakes up as
        soon as it arrives; a local abort waits at most :data:`_NEXT_FRAGMENT_WAIT_S`.
        """
        if self._prefix:
            return True
        if super().ready:
            return True
        dimse = self.assoc.dimse
        sock = self.socket
        if sock is None or not isinstance(dimse, StreamingDIMSE) or not dimse.receiving:
            return False
        try:
            select.select([sock], [], [], _NEXT_FRAGMENT_WAIT_S)
        except (OSError, ValueError):
            return False  # closed meanwhile: the next read says so
        return bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read a PDU header, or the body of the header read last if its length is in bounds.

        While a C-STORE data set arrives, its P-DATA-TF PDUs are handed to it here
        (:meth:`_stream_data_pdus`) and the header returned is the next other PDU's.
        """
        if self._header is None:
            data = self._read(nr_bytes)
            if nr_bytes == HEADER_LENGTH and len(data) == HEADER_LENGTH:
                data = self._stream_data_pdus(data)
            if nr_bytes == HEADER_LENGTH and len(data) == HEADER_LENGTH:
                header = PduHeader.decode(data)
                # An unrecognised type gets no body read (the DUL answers Evt19 itself).
                self._header = header if header.known_type is not None else None
            return data
        header, self._header = self._header, None
        body, self._body = self._body, None
        pdu_type = header.known_type
        assert pdu_type is not None  # only known types are kept
        limit = length_limit(pdu_type, self._maximum_pdu_size)
        if nr_bytes != header.length or nr_bytes > limit:
            log.warning(
                "%s declaring %d bytes refused (limit %d); association aborted (peer %s)",
                pdu_type.name,
                header.length,
                limit,
                self.assoc.requestor.address,
            )
            if self._audit is not None:
                self._audit.association_aborted(
                    self.assoc,
                    f"A-ABORT (invalid_pdu_parameter_value): {pdu_type.name} declares "
                    f"{header.length} bytes, more than {limit}",
                )
            return self._abort(AbortReason.INVALID_PDU_PARAMETER_VALUE)
        if body is not None:
            return body
        return self._read(nr_bytes)

    def _stream_data_pdus(self, data: bytearray) -> bytearray:
        """Give the P-DATA-TF PDUs of a data set being received straight to it.

        pynetdicom's DUL spends about as much time on each PDU (decoding it into objects,
        events, the state machine, a DIMSE primitive) as the rest of a C-STORE together. A
        P-DATA-TF whose PDVs are all non-final fragments of the data set being received, in
        Sta6 with nothing of ours waiting to be sent, leads to exactly one thing there (DT-2:
        the fragments go to the DIMSE provider), so it is done here instead; its length is
        bounded as every PDU's. Any other PDU (the last fragment, a command, an A-ABORT) is
        left to the DUL: its header is returned and, if read already, its body kept for the
        next ``recv``. ``EVT_DATA_RECV`` and ``EVT_PDU_RECV`` are not triggered for the PDUs
        consumed here (we bind neither). A local abort waits for the next PDU or the network
        timeout, as it does when the peer stalls in the middle of a PDU.
        """
        dimse = self.assoc.dimse
        if not isinstance(dimse, StreamingDIMSE):
            return data
        dul = self.assoc.dul
        while (
            dimse.receiving
            and dul.to_provider_queue.empty()
            and dul.state_machine.current_state == _DATA_TRANSFER_STATE
        ):
            header = PduHeader.decode(data)
            if header.pdu_type != PduType.P_DATA_TF or header.length > self._maximum_pdu_size:
                return data
            body = self._read(header.length)
            if len(body) != header.length or not dimse.receive_fragments(body):
                self._body = body  # the DUL decodes it (or sees it cut short)
                return data
            dul._idle_timer.restart()
            data = self._read(HEADER_LENGTH)
            if len(data) != HEADER_LENGTH:
                break  # closed or stalled: the DUL sees a short header
        return data

    def _read(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` from the prefix, then the socket, received straight into one buffer.

        pynetdicom's ``AssociationSocket.recv`` reads 4 KiB at a time and appends each piece:
        16 system calls and copies for a 64 KiB PDU. Shorter data means the peer closed.
        """
        from_prefix = self._prefix[:nr_bytes]
        del self._prefix[:nr_bytes]
        sock = self.socket
        if len(from_prefix) == nr_bytes or sock is None:
            return from_prefix
        buffer = bytearray(nr_bytes)
        received = len(from_prefix)
        buffer[:received] = from_prefix
        try:
            with memoryview(buffer) as view:
                while received < nr_bytes:
                    count = sock.recv_into(view[received:], nr_bytes - received)
                    if not count:
                        break
                    received += count
        except TimeoutError:
            # The socket's timeout is the network timeout: a peer that stops mid-PDU for that
            # long is treated as gone. Short data makes the DUL close the connection.
            log.warning("peer %s stalled in the middle of a PDU", self.assoc.requestor.address)
            return bytearray()
        del buffer[received:]
        return buffer

    def _abort(self, reason: AbortReason) -> bytearray:
        """Send an A-ABORT, linger for the peer to close, and report the connection closed."""
        sock = self.socket
        if sock is not None:
            refuse(sock, abort_pdu(reason), time.monotonic() + self._linger_s)
        # Nothing returned: the DUL sees a connection closed mid-PDU (Evt17) and aborts.
        return bytearray()


class GuardedRequestHandler(RequestHandler):
    """Admit a connection (TLS, A-ASSOCIATE-RQ, AE checks, a slot), then run its association.

    Runs in the connection's own thread; the association runs in pynetdicom's acceptor thread,
    which this one waits for so the slot is given back exactly when the association ends.
    """

    server: GuardedAssociationServer

    def handle(self) -> None:
        host = str(self.client_address[0])
        server = self.server
        deadline = time.monotonic() + server.admission.limits.artim_timeout_s
        sock: socket.socket = self.request
        encoded = bytearray()
        admitted = False
        try:
            sock = self.request = server.start_tls(sock, deadline)
            encoded = read_associate_rq(sock, deadline)
            request = check_request(encoded, host, server.settings)
            if not server.admission.admit():
                raise RefusedError.reject(LOCAL_LIMIT_EXCEEDED, request, security_alert=False)
            admitted = True
        except ConnectionEndedError as ended:
            log.info("connection from %s ended before an association request: %s", host, ended)
        except RefusedError as refusal:
            log.warning("association from %s refused with %s", host, refusal.reason)
            refuse(sock, refusal.reply, deadline)
            if server.audit is not None:
                server.audit.association_refused(host, refusal)
        except ssl.SSLError as exc:
            log.warning("TLS with %s failed: %s", host, exc.reason or exc)
            if server.audit is not None:
                server.audit.tls_failed(host, str(exc.reason or type(exc).__name__))
        except OSError as exc:  # reset or refused by the kernel: a vanished peer, not news
            log.info("connection from %s failed before admission: %s", host, exc)
        finally:
            server.admission.close_pending(host)
        try:
            if admitted:
                self._run_association(sock, encoded)
        finally:
            if admitted:
                server.admission.release()
            server.shutdown_request(sock)

    def _run_association(self, sock: socket.socket, encoded: bytearray) -> None:
        sock.settimeout(self.ae.network_timeout)
        assoc = self._create_bounded_association(sock, encoded)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        try:
            assoc.join()
        finally:
            if isinstance(assoc.dimse, StreamingDIMSE):
                assoc.dimse.discard_all()  # a data set cut off by an abort leaves nothing
        if self.server.audit is not None:  # every handler of the association has returned
            self.server.audit.association_ended(assoc)

    def _create_bounded_association(self, sock: socket.socket, prefix: bytearray) -> Association:
        """``RequestHandler._create_association`` of pynetdicom 3.0.4 with our socket class."""
        assoc = ReactiveAssociation(self.ae, _MODE_ACCEPTOR)
        assoc._server = self.server

        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"

        bounded = BoundedAssociationSocket(
            assoc,
            sock,
            prefix=prefix,
            maximum_pdu_size=self.ae.maximum_pdu_size,
            linger_s=self.server.admission.limits.artim_timeout_s,
            audit=self.server.audit,
        )
        assoc.set_socket(bounded)
        if self.server.store is not None:
            assoc.use_dimse(StreamingDIMSE(assoc, self.server.store, self.server.activity))

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)

        assoc.requestor.address_info = self.remote

        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(Any, handler)
                    assoc.bind(event, handler[0], handler[1])
        return assoc


class GuardedAssociationServer(ThreadedAssociationServer):
    """The SCP's server: admission control, bounded reads, TLS in the connection's thread.

    Also lets several processes listen on one port (``SO_REUSEPORT``); each process then
    admits up to the configured limits on its own.
    """

    #: Connection threads live as long as their association; never join them on close.
    daemon_threads = True

    def __init__(
        self,
        *args: Any,
        settings: Settings,
        audit: NodeAudit | None = None,
        store: InstanceStore | None = None,
        activity: IngestActivity | None = None,
        **kwargs: Any,
    ) -> None:
        self.settings = settings
        #: Where refusals and ended associations are reported (None: not audited).
        self.audit = audit
        #: Where C-STORE data sets are written while they arrive (none: pynetdicom's way).
        self.store = store
        #: Told of every P-DATA received (none: nobody yields to ingest).
        self.activity = activity
        self.admission = Admission(AdmissionLimits.from_settings(settings.node))
        # The listen backlog (socketserver's default is 5): a burst of connections must reach
        # accept() and its limits, not have its SYNs dropped and retried seconds later.
        self.request_queue_size = min(settings.node.max_pending, socket.SOMAXCONN)
        kwargs["request_handler"] = GuardedRequestHandler
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        assert self.socket is not None
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a plain socket; TLS, if any, is negotiated later in the connection's thread."""
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Count the connection as pending, or close it at once if a pending limit is reached."""
        host = str(client_address[0])
        if self.admission.open_pending(host):
            return True
        log.warning("connection from %s closed: too many connections awaiting admission", host)
        return False

    def start_tls(self, sock: socket.socket, deadline: float) -> socket.socket:
        """The TLS handshake (``ssl_context``), in the caller's thread, bounded by ``deadline``."""
        if self.ssl_context is None:
            return sock
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except TimeoutError as exc:
            tls.close()
            raise ConnectionEndedError("ARTIM timer expired during the TLS handshake") from exc
        except OSError:
            tls.close()
            raise
        return tls

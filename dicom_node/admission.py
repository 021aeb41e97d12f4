"""Admission of incoming connections: nothing is spent on a peer before it has said who it is.

A connection is *pending* from the moment it is accepted until its A-ASSOCIATE-RQ has been read
and checked: at most ``node.max_pending`` of them at once, at most ``node.max_pending_per_peer``
from one address, each given ``node.artim_timeout`` seconds (the ARTIM timer, PS3.8 9.1.5) to
finish any TLS handshake and deliver a request no longer than
:data:`~dicom_node.pdu.MAX_ASSOCIATE_LENGTH`. Only a request whose called AE title is ours and
whose calling AE title and address are allowed takes one of ``node.max_associations`` slots;
a connection that sends nothing, sends junk or names a stranger never holds a slot, so it cannot
lock out the PACS.

The functions here work on a plain (or TLS) socket of the standard library; the pynetdicom side
is in :mod:`dicom_node.transport`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_RQ

from config.settings import NodeSettings, Settings
from dicom_node.pdu import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    HEADER_LENGTH,
    MAX_ASSOCIATE_LENGTH,
    AbortReason,
    PduHeader,
    PduType,
    RejectReason,
    abort_pdu,
)

log = logging.getLogger(__name__)

#: Bytes read at once while discarding what a refused peer still sends.
_DRAIN_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """How many connections may wait for admission, and how many associations may run."""

    max_associations: int
    max_pending: int
    max_pending_per_peer: int
    artim_timeout_s: float

    @classmethod
    def from_settings(cls, node: NodeSettings) -> AdmissionLimits:
        return cls(
            max_associations=node.max_associations,
            max_pending=node.max_pending,
            max_pending_per_peer=node.max_pending_per_peer,
            artim_timeout_s=node.artim_timeout,
        )


@dataclass(frozen=True, slots=True)
class AdmissionCounts:
    """A snapshot of the counters, for tests and monitoring."""

    pending: int
    admitted: int


class Admission:
    """Thread-safe counters of pending connections (per peer address) and admitted associations.

    Every :meth:`open_pending` that returned ``True`` is matched by one :meth:`close_pending`,
    every :meth:`admit` that returned ``True`` by one :meth:`release`.
    """

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._pending_total = 0
        self._admitted = 0

    def open_pending(self, host: str) -> bool:
        """Count a newly accepted connection from ``host``; ``False`` if a limit is reached."""
        with self._lock:
            if self._pending_total >= self.limits.max_pending:
                return False
            if self._pending[host] >= self.limits.max_pending_per_peer:
                return False
            self._pending[host] += 1
            self._pending_total += 1
            return True

    def close_pending(self, host: str) -> None:
        with self._lock:
            self._pending[host] -= 1
            if self._pending[host] <= 0:
                del self._pending[host]
            self._pending_total -= 1

    def admit(self) -> bool:
        """Take an association slot; ``False`` when all are taken."""
        with self._lock:
            if self._admitted >= self.limits.max_associations:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def counts(self) -> AdmissionCounts:
        with self._lock:
            return AdmissionCounts(self._pending_total, self._admitted)


class ConnectionEndedError(Exception):
    """The peer closed the connection, or the ARTIM timer expired, before a request came."""


class RefusedError(Exception):
    """The request is refused: ``reply`` (an A-ABORT or A-ASSOCIATE-RJ PDU) is sent, then close.

    ``security_alert`` says whether the refusal is audited as a security alert (a stranger, a
    protocol violation) rather than a matter of capacity. The AE titles are those of the
    request, when it could be decoded.
    """

    def __init__(
        self,
        reply: bytes,
        reason: str,
        *,
        security_alert: bool = True,
        calling_ae_title: str | None = None,
        called_ae_title: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason
        self.security_alert = security_alert
        self.calling_ae_title = calling_ae_title
        self.called_ae_title = called_ae_title

    @classmethod
    def abort(cls, reason: AbortReason, detail: str) -> RefusedError:
        return cls(abort_pdu(reason), f"A-ABORT ({reason.name.lower()}): {detail}")

    @classmethod
    def reject(
        cls,
        reason: RejectReason,
        request: A_ASSOCIATE_RQ | None = None,
        *,
        security_alert: bool = True,
    ) -> RefusedError:
        return cls(
            reason.encode(),
            f"A-ASSOCIATE-RJ: {reason.name}",
            security_alert=security_alert,
            calling_ae_title=None if request is None else str(request.calling_ae_title).strip(),
            called_ae_title=None if request is None else str(request.called_ae_title).strip(),
        )


def recv_exactly(sock: socket.socket, count: int, deadline: float) -> bytearray:
    """Read exactly ``count`` bytes before ``deadline`` (a :func:`time.monotonic` time)."""
    data = bytearray()
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectionEndedError("ARTIM timer expired")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(count - len(data), _DRAIN_CHUNK))
        except TimeoutError as exc:
            raise ConnectionEndedError("ARTIM timer expired") from exc
        if not chunk:
            raise ConnectionEndedError("closed by the peer")
        data += chunk
    return data


def read_associate_rq(sock: socket.socket, deadline: float) -> bytearray:
    """The first PDU of a connection, which must be an A-ASSOCIATE-RQ of bounded length.

    Raises
    ------
    ConnectionEndedError
        The peer closed the connection or the ARTIM timer expired first.
    RefusedError
        The first PDU is not an A-ASSOCIATE-RQ, or declares more than
        :data:`~dicom_node.pdu.MAX_ASSOCIATE_LENGTH` bytes (nothing of it is read).
    """
    raw_header = recv_exactly(sock, HEADER_LENGTH, deadline)
    header = PduHeader.decode(raw_header)
    if header.known_type is None:
        raise RefusedError.abort(AbortReason.UNRECOGNIZED_PDU, f"PDU type 0x{header.pdu_type:02X}")
    if header.known_type is not PduType.ASSOCIATE_RQ:
        raise RefusedError.abort(AbortReason.UNEXPECTED_PDU, f"{header.known_type.name} first")
    if header.length > MAX_ASSOCIATE_LENGTH:
        raise RefusedError.abort(
            AbortReason.INVALID_PDU_PARAMETER_VALUE,
            f"A-ASSOCIATE-RQ declares {header.length} bytes, more than {MAX_ASSOCIATE_LENGTH}",
        )
    return raw_header + recv_exactly(sock, header.length, deadline)


def check_request(encoded: bytes | bytearray, host: str, settings: Settings) -> A_ASSOCIATE_RQ:
    """Decode an A-ASSOCIATE-RQ and check its AE titles and the peer's address.

    Raises
    ------
    RefusedError
        The request cannot be decoded (A-ABORT), the called AE title is not ours or the calling
        AE title is not allowed from ``host`` (A-ASSOCIATE-RJ, rejected-permanent, PS3.8 9.3.4).
    """
    request = A_ASSOCIATE_RQ()
    try:
        request.decode(bytes(encoded))
    except Exception as exc:  # hostile bytes raise anything from struct, codecs or indexing
        raise RefusedError.abort(
            AbortReason.INVALID_PDU_PARAMETER_VALUE, f"undecodable ({type(exc).__name__})"
        ) from exc
    if str(request.called_ae_title).strip() != settings.node.ae_title:
        raise RefusedError.reject(CALLED_AE_NOT_RECOGNISED, request)
    if not settings.calling_ae_allowed(str(request.calling_ae_title), host):
        raise RefusedError.reject(CALLING_AE_NOT_RECOGNISED, request)
    return request


def refuse(sock: socket.socket, reply: bytes, deadline: float) -> None:
    """Send ``reply``, then wait for the peer to close until ``deadline``, discarding its bytes.

    This is PS3.8's Sta13 (awaiting transport close, under the ARTIM timer). Closing at once with
    unread bytes would make the kernel answer with a reset, and the peer might never read why.
    Whatever it still sends is read into one reused buffer: memory stays constant.
    """
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(reply)
        sock.shutdown(socket.SHUT_WR)
        scratch = bytearray(_DRAIN_CHUNK)
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if sock.recv_into(scratch) == 0:
                break
    except OSError:  # reset, timeout, or TLS failure: the peer is gone or too slow; close
        pass

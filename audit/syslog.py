"""Audit messages to a syslog collector: RFC 5424 over UDP (RFC 5426), TCP or TLS (RFC 5425).

PS3.15 A.6 and A.7 say how a DICOM audit message travels as syslog: facility 10
(security/authorization), severity 5 (notice) or 4 (warning), MSGID ``DICOM+RFC3881``, and the
XML as the MSG, here as RFC 5424's MSG-UTF8 (a byte order mark, then UTF-8). On a stream (TCP,
TLS) each message is framed by octet counting (RFC 6587 3.4.1, RFC 5425 4.3): its length in
decimal, a space, the message.

:class:`SyslogForwarder` never blocks its callers: :meth:`~SyslogForwarder.submit` puts the
message into a bounded queue and returns; one background thread connects, sends, and after a
failure waits (backing off to :data:`MAX_BACKOFF_S`) before it reconnects and sends the same
message again. A full queue drops the new message and counts it. Message contents are never
logged: they carry participant identifiers.

``rfc5424-logging-handler`` was considered and not used: it connects in its constructor (a
collector that is down at start-up raises there), reconnects inline once per message, and is a
``logging`` handler, which would route patient identifiers through the logging framework.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Protocol

from config.settings import SyslogSettings, SyslogTransport, TlsSettings

log = logging.getLogger(__name__)

#: Facility 10, security/authorization messages (PS3.15 A.6, A.7).
FACILITY_AUTHPRIV = 10
#: The MSGID PS3.15 A.7 names for DICOM audit messages.
MSGID = "DICOM+RFC3881"
#: RFC 5424 6.4: a MSG starting with the byte order mark is UTF-8.
BOM = b"\xef\xbb\xbf"
NILVALUE = "-"
#: Longest wait between two attempts to reach a collector that is down.
MAX_BACKOFF_S = 30.0
_FIRST_BACKOFF_S = 0.5


class Severity(IntEnum):
    """RFC 5424 severities used for audit messages (PS3.15 A.7)."""

    WARNING = 4
    NOTICE = 5


def _printusascii(value: str, limit: int) -> str:
    """RFC 5424 header fields: PRINTUSASCII (33-126) only, at most ``limit``; else NILVALUE."""
    kept = "".join(ch for ch in value if 33 <= ord(ch) <= 126)[:limit]
    return kept or NILVALUE


def _timestamp(moment: datetime) -> str:
    """RFC 5424 6.2.3 TIMESTAMP in UTC, microseconds (TIME-SECFRAC of six digits)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_message(
    body: bytes,
    *,
    occurred_at: datetime,
    hostname: str,
    app_name: str,
    procid: str,
    severity: Severity,
    msgid: str = MSGID,
    facility: int = FACILITY_AUTHPRIV,
) -> bytes:
    """One RFC 5424 SYSLOG-MSG: header, no structured data, ``body`` as MSG-UTF8.

    ``HEADER = PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID`` (6.2).
    """
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility must be 0-23, got {facility}")
    if occurred_at.tzinfo is None:
        raise ValueError("a syslog TIMESTAMP needs a time zone")
    header = " ".join(
        (
            f"<{facility * 8 + int(severity)}>1",
            _timestamp(occurred_at),
            _printusascii(hostname, 255),
            _printusascii(app_name, 48),
            _printusascii(procid, 128),
            _printusascii(msgid, 32),
            NILVALUE,  # STRUCTURED-DATA
        )
    )
    return header.encode("ascii") + b" " + BOM + body


def frame_octet_counting(message: bytes) -> bytes:
    """RFC 6587 3.4.1 / RFC 5425 4.3: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


# Transports -----------------------------------------------------------------------------------
class Connection(Protocol):
    """An open way to the collector."""

    def send(self, message: bytes) -> None: ...

    def close(self) -> None: ...


class _Datagrams:
    """RFC 5426: each message in one UDP datagram, no framing."""

    def __init__(self, host: str, port: int) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self._socket = socket.socket(family, kind, proto)
        self._address = address

    def send(self, message: bytes) -> None:
        self._socket.sendto(message, self._address)

    def close(self) -> None:
        self._socket.close()


class _Stream:
    """TCP or TLS with octet-counting framing."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock

    def send(self, message: bytes) -> None:
        self._socket.sendall(frame_octet_counting(message))

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a TLS close on a broken connection
            self._socket.close()


def tls_context(settings: SyslogSettings, node_tls: TlsSettings) -> ssl.SSLContext:
    """Client context for RFC 5425: the collector's certificate and name verified, TLS 1.2+.

    The node's certificate and key (``node.tls``), when configured, are presented for the mutual
    authentication ATNA asks for.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.ca_certificates is not None:
        context.load_verify_locations(cafile=Path(settings.ca_certificates))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if node_tls.certificate is not None and node_tls.private_key is not None:
        context.load_cert_chain(node_tls.certificate, node_tls.private_key)
    return context


def connect(settings: SyslogSettings, tls: ssl.SSLContext | None, timeout_s: float) -> Connection:
    """Open a connection to the configured collector (raises :class:`OSError` when it fails)."""
    host = settings.host
    if host is None:
        raise ValueError("no syslog collector host configured")
    port = settings.effective_port
    if settings.transport is SyslogTransport.UDP:
        return _Datagrams(host, port)
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        sock.settimeout(timeout_s)
        if settings.transport is SyslogTransport.TLS:
            if tls is None:
                raise ValueError("audit.syslog.transport 'tls' needs a TLS context")
            sock = tls.wrap_socket(sock, server_hostname=settings.tls_server_name or host)
    except BaseException:
        sock.close()
        raise
    return _Stream(sock)


# The forwarder --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ForwarderCounts:
    """What the forwarder did so far (for ``/metrics``)."""

    sent: int
    dropped: int
    send_errors: int
    queued: int


class SyslogForwarder:
    """A bounded queue of formatted messages and the thread that sends them to the collector."""

    def __init__(
        self,
        settings: SyslogSettings,
        *,
        tls: ssl.SSLContext | None = None,
        hostname: str | None = None,
    ) -> None:
        if settings.host is None:
            raise ValueError("audit.syslog.host is required to forward audit messages")
        if settings.transport is SyslogTransport.TLS and tls is None:
            raise ValueError("audit.syslog.transport 'tls' needs a TLS context")
        self.settings = settings
        self._tls = tls
        self._hostname = hostname or socket.getfqdn() or socket.gethostname()
        self._procid = str(os.getpid())
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=settings.queue_size)
        self._lock = threading.Lock()
        self._sent = self._dropped = self._errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._connection: Connection | None = None

    def submit(
        self, body: bytes, *, occurred_at: datetime, severity: Severity = Severity.NOTICE
    ) -> bool:
        """Queue one audit message for sending; ``False`` if the queue was full (counted)."""
        message = format_message(
            body,
            occurred_at=occurred_at,
            hostname=self._hostname,
            app_name=self.settings.app_name,
            procid=self._procid,
            severity=severity,
        )
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            with self._lock:
                self._dropped += 1
                dropped = self._dropped
            if dropped == 1 or dropped % 1000 == 0:
                log.warning("syslog audit queue full: %d messages dropped so far", dropped)
            return False
        return True

    def counts(self) -> ForwarderCounts:
        with self._lock:
            return ForwarderCounts(self._sent, self._dropped, self._errors, self._queue.qsize())

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is queued for up to ``timeout_s``, then close; what is left is dropped."""
        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.1))
        left = self._queue.qsize()
        if left:
            with self._lock:
                self._dropped += left
            log.warning("syslog audit sender stopped with %d messages unsent", left)

    def _run(self) -> None:
        backoff = _FIRST_BACKOFF_S
        while not self._stop.is_set():
            try:
                message = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            while not self._stop.is_set():
                if self._send(message):
                    backoff = _FIRST_BACKOFF_S
                    break
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        self._disconnect()

    def _send(self, message: bytes) -> bool:
        try:
            if self._connection is None:
                self._connection = connect(self.settings, self._tls, self.settings.timeout_s)
            self._connection.send(message)
        except OSError as exc:  # refused, unreachable, timed out, reset, TLS failure
            with self._lock:
                self._errors += 1
                errors = self._errors
            if errors == 1 or errors % 100 == 0:
                log.warning(
                    "syslog collector %s:%d (%s) unreachable: %s (%d failures so far)",
                    self.settings.host,
                    self.settings.effective_port,
                    self.settings.transport.value,
                    type(exc).__name__,
                    errors,
                )
            self._disconnect()
            return False
        with self._lock:
            self._sent += 1
        return True

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

"""A local syslog collector for tests: UDP (RFC 5426), TCP or TLS (RFC 5425) with octet counting.

Received messages are parsed strictly against the RFC 5424 ABNF (section 6), independently of
the code under test, and kept in arrival order. Also: a collector that accepts nothing, for the
"dead collector" cases.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

BOM = b"\xef\xbb\xbf"

_HEADER = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) "
    rb"(?P<timestamp>-|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})) "
    rb"(?P<hostname>[\x21-\x7e]{1,255}) (?P<app_name>[\x21-\x7e]{1,48}) "
    rb"(?P<procid>[\x21-\x7e]{1,128}) (?P<msgid>[\x21-\x7e]{1,32}) "
    rb"(?P<structured_data>-|(?:\[[^\]]*\])+)(?: (?P<msg>.*))?\Z",
    re.DOTALL,
)


@dataclass(frozen=True)
class SyslogMessage:
    """One RFC 5424 SYSLOG-MSG, parsed."""

    facility: int
    severity: int
    version: int
    timestamp: datetime | None
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: bytes

    def xml(self) -> ET.Element:
        """The MSG as XML; it must be MSG-UTF8 (a byte order mark, then UTF-8)."""
        assert self.msg.startswith(BOM), "MSG is not MSG-UTF8 (no byte order mark)"
        return ET.fromstring(self.msg[len(BOM) :].decode("utf-8"))


def parse_rfc5424(data: bytes) -> SyslogMessage:
    """Parse one message; raises ``ValueError`` if it does not follow RFC 5424 section 6."""
    match = _HEADER.match(data)
    if match is None:
        raise ValueError(f"not an RFC 5424 message: {data[:120]!r}")
    pri = int(match["pri"])
    if pri > 191:
        raise ValueError(f"PRIVAL {pri} out of range")
    stamp = match["timestamp"].decode()
    return SyslogMessage(
        facility=pri // 8,
        severity=pri % 8,
        version=int(match["version"]),
        timestamp=None if stamp == "-" else datetime.fromisoformat(stamp.replace("Z", "+00:00")),
        hostname=match["hostname"].decode(),
        app_name=match["app_name"].decode(),
        procid=match["procid"].decode(),
        msgid=match["msgid"].decode(),
        structured_data=match["structured_data"].decode(),
        msg=match["msg"] or b"",
    )


def split_octet_counted(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete ``MSG-LEN SP SYSLOG-MSG`` frames of ``buffer`` (RFC 6587 3.4.1) and the rest."""
    frames: list[bytes] = []
    while buffer:
        space = buffer.find(b" ")
        if space == -1:
            if not buffer.isdigit() or len(buffer) > 10:
                raise ValueError(f"not an octet-counted frame: {buffer[:40]!r}")
            break
        length = buffer[:space]
        if not length.isdigit() or length.startswith(b"0"):
            raise ValueError(f"MSG-LEN must be NONZERO-DIGIT *DIGIT: {length[:20]!r}")
        end = space + 1 + int(length)
        if len(buffer) < end:
            break
        frames.append(buffer[space + 1 : end])
        buffer = buffer[end:]
    return frames, buffer


class SyslogListener:
    """A collector on 127.0.0.1 for ``transport`` (``udp``, ``tcp`` or ``tls``)."""

    def __init__(self, transport: str, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.transport = transport
        self._tls = tls
        self._lock = threading.Lock()
        self._messages: list[bytes] = []
        self.errors: list[str] = []
        self.client_certificates: list[dict[str, object]] = []
        self._closing = threading.Event()
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self._socket = socket.socket(socket.AF_INET, kind)
        if kind == socket.SOCK_STREAM:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port = int(self._socket.getsockname()[1])
        if kind == socket.SOCK_STREAM:
            self._socket.listen(16)
        target = self._receive_datagrams if transport == "udp" else self._accept
        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    @property
    def messages(self) -> list[SyslogMessage]:
        with self._lock:
            raw = list(self._messages)
        return [parse_rfc5424(data) for data in raw]

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[SyslogMessage]:
        """Wait until ``count`` messages arrived; return them all (parsed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                arrived = len(self._messages)
            if arrived >= count:
                return self.messages
            if time.monotonic() > deadline:
                raise TimeoutError(f"{arrived} syslog messages arrived, expected {count}")
            time.sleep(0.02)

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):  # wakes a thread blocked in accept() or recv()
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(5)

    def _keep(self, data: bytes) -> None:
        with self._lock:
            self._messages.append(data)

    def _receive_datagrams(self) -> None:
        while not self._closing.is_set():
            try:
                data = self._socket.recv(65535)
            except OSError:
                return
            self._keep(data)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            threading.Thread(target=self._receive_stream, args=(conn,), daemon=True).start()

    def _receive_stream(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            sock = conn
            try:
                if self._tls is not None:
                    sock = self._tls.wrap_socket(conn, server_side=True)
                    self.client_certificates.append(dict(sock.getpeercert() or {}))
                pending = b""
                while chunk := sock.recv(65536):
                    frames, pending = split_octet_counted(pending + chunk)
                    for frame in frames:
                        self._keep(frame)
            except (OSError, ValueError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def syslog_listener(
    transport: str, tls: ssl.SSLContext | None = None, *, port: int = 0
) -> Iterator[SyslogListener]:
    """A :class:`SyslogListener` (on ``port``, else a free one), closed on exit."""
    listener = SyslogListener(transport, tls, port)
    try:
        yield listener
    finally:
        listener.close()


@contextlib.contextmanager
def unresponsive_collector() -> Iterator[int]:
    """A TCP port whose accept queue is full: a connection attempt hangs until it times out.

    The listening socket never accepts; its backlog is filled first, so further SYNs are
    dropped, as with a collector host that is down or behind a firewall that drops packets.
    """
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):  # Linux queues backlog + 1 connections; the rest are not answered
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            pass  # the hang this collector exists for
        else:
            raise RuntimeError("the accept queue did not fill: connections are still answered")
        finally:
            probe.close()
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()

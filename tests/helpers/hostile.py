"""A raw-socket DICOM peer that does what a well-behaved one never would.

It speaks just enough of the Upper Layer protocol (PS3.8) to get an association accepted, then
sends whatever the test asks for: PDU headers that lie about their length, junk, or nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from dicom_node.conformance import VERIFICATION_SOP_CLASS
from dicom_node.pdu import HEADER, PduType

#: DICOM Application Context Name (PS3.7 A.2.1).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def associate_rq(calling: str, called: str) -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification, as pynetdicom encodes it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = build_context(VERIFICATION_SOP_CLASS)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


@dataclass(frozen=True)
class Pdu:
    """A PDU as received: its type and its body (everything after the 6-byte header)."""

    pdu_type: int
    body: bytes

    @property
    def encoded(self) -> bytes:
        return HEADER.pack(self.pdu_type, 0, len(self.body)) + self.body


def connect(port: int, *, source: str = "127.0.0.1", timeout_s: float = 10.0) -> socket.socket:
    """A TCP connection to the node from ``source`` (any 127/8 address works on loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _recv_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def read_pdu(sock: socket.socket) -> Pdu | None:
    """The next PDU from the node, or ``None`` if it closed the connection (or reset it)."""
    try:
        header = _recv_exactly(sock, HEADER.size)
        if header is None:
            return None
        pdu_type, _, length = HEADER.unpack(header)
        body = _recv_exactly(sock, length)
    except ConnectionResetError:
        return None
    return None if body is None else Pdu(pdu_type, body)


def associate(port: int, calling: str, called: str) -> socket.socket:
    """A raw connection on which the node has accepted an association (Verification)."""
    sock = connect(port)
    sock.sendall(associate_rq(calling, called))
    reply = read_pdu(sock)
    assert reply is not None, "node closed the connection instead of answering"
    assert reply.pdu_type == PduType.ASSOCIATE_AC, f"expected A-ASSOCIATE-AC, got {reply}"
    return sock


class JunkSender:
    """Sends ``total`` bytes of junk from one reused buffer in a thread, until refused."""

    CHUNK = 1024 * 1024

    def __init__(self, sock: socket.socket, total: int) -> None:
        self.sock = sock
        self.total = total
        self.sent = 0
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        chunk = memoryview(b"\xa5" * self.CHUNK)
        try:
            while self.sent < self.total:
                self.sent += self.sock.send(chunk[: min(self.CHUNK, self.total - self.sent)])
        except OSError as exc:  # the node closed the connection: what a refusal looks like
            self.error = exc
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def start(self) -> JunkSender:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"junk sender still sending after {timeout_s} s")


def wait_closed(sock: socket.socket, timeout_s: float) -> float:
    """Seconds until the node closes ``sock`` (reads and discards anything it sends first)."""
    start = time.monotonic()
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start

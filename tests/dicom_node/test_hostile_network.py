"""The node against hostile peers: lying PDU lengths, silent and vanishing connections.

Each test reproduces an attack measured against the node before it was hardened (issue 11):
a PDU header declaring 4 GiB followed by 300 MiB of junk grew the node by 300 MB, and sixteen
connections that sent nothing locked every sender out with A-ASSOCIATE-RJ (local limit) for the
30 s ACSE timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from sqlalchemy import func, select

from db.models import Instance
from dicom_node.admission import AdmissionCounts
from dicom_node.conformance import DX_PRESENTATION_STORAGE, VERIFICATION_SOP_CLASS, StoreStatus
from dicom_node.pdu import (
    CALLING_AE_NOT_RECOGNISED,
    HEADER,
    LOCAL_LIMIT_EXCEEDED,
    MAX_ASSOCIATE_LENGTH,
    AbortReason,
    PduType,
    abort_pdu,
)
from dicom_node.peer import request_association
from gateway.service import Service
from tests.dicom_node.test_scp import small_dx
from tests.helpers.hostile import JunkSender, Pdu, associate, connect, read_pdu, wait_closed
from tests.helpers.node import NodeFactory
from tests.helpers.node_process import NodeProcess, node_process

CALLED = "FRACTUREGW"
ATTACK_BYTES = 300 * 1024 * 1024
MEMORY_BUDGET = 20 * 1024 * 1024
REFUSED_LENGTH = abort_pdu(AbortReason.INVALID_PDU_PARAMETER_VALUE)


def echo(port: int, calling: str = "TESTSCU") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == StoreStatus.SUCCESS
    finally:
        assoc.release()


def send_lying_header(port: int, header: bytes, *, associated: bool) -> Pdu | None:
    """Send ``header`` and 300 MiB of junk; return the node's answer (``None``: just closed)."""
    sock = associate(port, "TESTSCU", CALLED) if associated else connect(port, timeout_s=60)
    with sock:
        sock.settimeout(60)
        sock.sendall(header)
        sender = JunkSender(sock, ATTACK_BYTES).start()
        reply = read_pdu(sock)
        sender.join(timeout_s=120)
        wait_closed(sock, timeout_s=30)
    return reply


def attack_cost(node: NodeProcess, header: bytes, *, associated: bool) -> tuple[int, Pdu | None]:
    """How far the node's resident memory rose during the attack, and the node's answer."""
    assert echo(node.port)  # warm up: every code path of a normal association has run once
    baseline = node.rss_bytes()
    node.reset_peak()
    reply = send_lying_header(node.port, header, associated=associated)
    return node.peak_rss_bytes() - baseline, reply


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pdu_type", "associated"),
    [(PduType.ASSOCIATE_RQ, False), (PduType.P_DATA_TF, True)],
    ids=["before-association", "inside-association"],
)
def test_pdu_declaring_4_gib_is_aborted_without_reading_it(
    tmp_path: Path, pdu_type: PduType, associated: bool
) -> None:
    """A header declaring 0xFFFFFFFF bytes and 300 MiB of junk: A-ABORT, under 20 MB spent."""
    header = HEADER.pack(pdu_type, 0, 0xFFFFFFFF)
    with node_process(tmp_path) as node:
        cost, reply = attack_cost(node, header, associated=associated)
        assert cost < MEMORY_BUDGET, f"the node grew by {cost / 2**20:.0f} MiB"
        assert reply is not None, "the node closed the connection without an A-ABORT"
        assert reply.encoded == REFUSED_LENGTH
        assert echo(node.port)


def test_associate_rq_just_over_the_bound_is_aborted(node: Service) -> None:
    with connect(node.dicom_port) as sock:
        sock.sendall(HEADER.pack(PduType.ASSOCIATE_RQ, 0, MAX_ASSOCIATE_LENGTH + 1))
        reply = read_pdu(sock)
    assert reply is not None
    assert reply.encoded == REFUSED_LENGTH


def test_p_data_one_byte_over_the_announced_maximum_is_aborted(start_node: NodeFactory) -> None:
    node = start_node(node={"maximum_pdu_size": 16384})
    with associate(node.dicom_port, "TESTSCU", CALLED) as sock:
        sock.sendall(HEADER.pack(PduType.P_DATA_TF, 0, 16385))
        reply = read_pdu(sock)
    assert reply is not None
    assert reply.encoded == REFUSED_LENGTH


def test_p_data_of_exactly_the_announced_maximum_is_received(start_node: NodeFactory) -> None:
    """A sender that fills every P-DATA-TF to the maximum we announce stores normally."""
    node = start_node(node={"maximum_pdu_size": 16384})
    lengths: list[int] = []

    def on_sent(event: Event) -> None:
        pdu = event.pdu  # type: ignore[attr-defined]
        if isinstance(pdu, P_DATA_TF):
            lengths.append(pdu.pdu_length)

    ds = small_dx()
    ds.Rows = ds.Columns = 256
    ds.PixelData = bytes(256 * 256)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate(
        "127.0.0.1", node.dicom_port, ae_title=CALLED, evt_handlers=[(evt.EVT_PDU_SENT, on_sent)]
    )
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 16384
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert int(status.Status) == StoreStatus.SUCCESS
    assert max(lengths) == 16384  # the variable field of a full P-DATA-TF, as announced


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def admission(service: Service) -> AdmissionCounts:
    assert service.scp is not None
    return service.scp.admission.counts()


def instance_count(service: Service) -> int:
    with service.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


@pytest.mark.slow
def test_idle_and_vanishing_connections_do_not_lock_out_the_pacs(
    start_node: NodeFactory,
) -> None:
    """50 silent sockets and 100 connect-then-close while the known PACS stores 20 instances.

    The strangers come from addresses of their own (any 127/8 address reaches loopback), so it
    is the slot accounting that protects the PACS here, not the per-address limit.
    """
    node = start_node(node={"known_sources": [{"ae_title": "PACS1", "host": "127.0.0.1"}]})
    port = node.dicom_port
    silent = [connect(port, source=f"127.0.1.{i}") for i in range(1, 51)]
    vanished = 0

    def connect_then_close() -> None:
        nonlocal vanished
        for i in range(1, 101):
            connect(port, source=f"127.0.2.{i}").close()
            vanished += 1

    attacker = threading.Thread(target=connect_then_close, daemon=True)
    attacker.start()
    assert eventually(lambda: vanished >= 16, 30)  # enough to have filled every slot before
    failures: list[str] = []
    statuses: list[int] = []
    try:
        for _ in range(20):
            ae = AE(ae_title="PACS1")
            ae.add_requested_context(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
            request = request_association(ae, "127.0.0.1", port, CALLED)
            if not request.established:
                failures.append(request.failure())
                continue
            try:
                statuses.append(int(request.assoc.send_c_store(small_dx()).Status))
            finally:
                request.assoc.release()
    finally:
        attacker.join(60)
        for sock in silent:
            sock.close()
    assert failures == []
    assert statuses == [StoreStatus.SUCCESS] * 20
    assert vanished == 100
    assert instance_count(node) == 20


def test_silent_connection_is_closed_after_the_artim_timeout(start_node: NodeFactory) -> None:
    node = start_node(node={"artim_timeout": 0.5})
    with connect(node.dicom_port) as sock:
        waited = wait_closed(sock, timeout_s=10)
    assert 0.4 <= waited < 5
    assert eventually(lambda: admission(node).pending == 0)


def test_connections_beyond_the_per_peer_limit_are_closed_at_once(
    start_node: NodeFactory,
) -> None:
    node = start_node(node={"max_pending_per_peer": 4, "artim_timeout": 30})
    port = node.dicom_port
    held = [connect(port, source="127.0.0.2") for _ in range(4)]
    try:
        assert eventually(lambda: admission(node).pending == 4)
        with connect(port, source="127.0.0.2") as extra:
            assert wait_closed(extra, timeout_s=10) < 5
        with connect(port, source="127.0.0.3") as other:
            other.settimeout(0.5)
            with pytest.raises(TimeoutError):
                other.recv(1)  # still open: the limit is per address
        assert echo(port)  # a sender on another address is not affected
    finally:
        for sock in held:
            sock.close()


def test_connections_beyond_the_pending_limit_are_closed_at_once(
    start_node: NodeFactory,
) -> None:
    node = start_node(node={"max_pending": 3, "artim_timeout": 30})
    port = node.dicom_port
    held = [connect(port, source=f"127.0.3.{i}") for i in range(1, 4)]
    try:
        assert eventually(lambda: admission(node).pending == 3)
        with connect(port, source="127.0.3.9") as extra:
            assert wait_closed(extra, timeout_s=10) < 5
    finally:
        for sock in held:
            sock.close()
    assert eventually(lambda: admission(node).pending == 0)
    assert echo(port)


def test_slots_are_taken_by_admitted_associations_only(start_node: NodeFactory) -> None:
    """With every slot taken, a known sender is told to retry, a stranger that it is unknown."""
    node = start_node(
        node={"max_associations": 2, "known_sources": [{"ae_title": "PACS1"}]},
    )
    port = node.dicom_port
    first = associate(port, "PACS1", CALLED)
    second = associate(port, "PACS1", CALLED)
    try:
        ae = AE(ae_title="PACS1")
        ae.add_requested_context(VERIFICATION_SOP_CLASS)
        busy = request_association(ae, "127.0.0.1", port, CALLED)
        assert busy.rejection is not None
        assert (busy.rejection.result, busy.rejection.source, busy.rejection.diagnostic) == (
            LOCAL_LIMIT_EXCEEDED.result,
            LOCAL_LIMIT_EXCEEDED.source,
            LOCAL_LIMIT_EXCEEDED.reason,
        )
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(VERIFICATION_SOP_CLASS)
        unknown = request_association(stranger, "127.0.0.1", port, CALLED)
        assert unknown.rejection is not None
        assert (unknown.rejection.result, unknown.rejection.diagnostic) == (
            CALLING_AE_NOT_RECOGNISED.result,
            CALLING_AE_NOT_RECOGNISED.reason,
        )
    finally:
        first.close()
        second.close()
    assert eventually(lambda: admission(node).admitted == 0)
    assert echo(port, calling="PACS1")

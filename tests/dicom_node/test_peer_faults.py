"""A misbehaving peer is logged in one line, never with a traceback; a closed port is
reported as "connection refused", not as an aborted association."""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE

from db.results import OutboxState
from dicom_node.outbox import list_outbox
from dicom_node.peer import request_association
from gateway.service import Service
from tests.dicom_node.test_outbox_delivery import FAST, destination, make_worker
from tests.helpers.results_db import ResultsDb, add_results, open_results_db
from tests.helpers.tools import free_port

pytestmark = pytest.mark.integration

VERIFICATION = b"1.2.840.10008.1.1"
WAIT_S = 15.0
#: The logger of the gate that reads and checks the A-ASSOCIATE-RQ before pynetdicom does.
GATE = "dicom_node.transport"


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq(abstract_syntax: bytes = VERIFICATION, calling: bytes = b"PEER") -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) with one presentation context, built by hand so
    that it can carry what a conforming library refuses to send."""
    body = (
        struct.pack(">HH", 1, 0)
        + b"FRACTUREGW".ljust(16)
        + calling.ljust(16)
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + _item(
            0x20,
            b"\x01\x00\x00\x00" + _item(0x30, abstract_syntax) + _item(0x40, b"1.2.840.10008.1.2"),
        )
        + _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    )
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def reset(connection: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def pynetdicom_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("pynetdicom")]


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def gate_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the gate that reads the A-ASSOCIATE-RQ before pynetdicom logged."""
    return [r for r in caplog.records if r.name == GATE]


def peer_faults(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in pynetdicom_records(caplog) if "peer fault" in r.getMessage()]


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    for record in pynetdicom_records(caplog):
        assert record.exc_info is None, record.getMessage()
        assert record.levelno <= logging.WARNING, record.getMessage()
        assert "\n" not in record.getMessage()
    assert "Traceback" not in caplog.text


@pytest.fixture
def caplog_warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING)
    return caplog


def test_tcp_reset_mid_association_request_is_one_line(
    node: Service, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    """The gate reads the A-ASSOCIATE-RQ itself (:mod:`dicom_node.transport`): a peer that
    vanishes in the middle of it is one INFO line, and pynetdicom never sees the connection."""
    caplog_warnings.set_level(logging.INFO, logger=GATE)
    connection = socket.create_connection(("127.0.0.1", node.dicom_port))
    connection.sendall(b"\x01\x00" + struct.pack(">L", 1000) + bytes(10))  # PDU cut short
    reset(connection)
    wait_for(lambda: bool(gate_lines(caplog_warnings)))
    [line] = gate_lines(caplog_warnings)
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        "connection from 127.0.0.1 failed before admission: [Errno 104] Connection reset by peer"
    )
    assert pynetdicom_records(caplog_warnings) == []
    assert_no_tracebacks(caplog_warnings)


def test_tcp_reset_of_an_established_association_is_one_warning(
    node: Service, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    ae = AE(ae_title="PEER")
    ae.add_requested_context(VERIFICATION.decode())
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="FRACTUREGW")
    assert assoc.is_established
    reset(assoc.dul.socket.socket)  # type: ignore[union-attr]
    wait_for(lambda: bool(peer_faults(caplog_warnings)))
    assert all("ConnectionResetError" in f for f in peer_faults(caplog_warnings))
    assert_no_tracebacks(caplog_warnings)


def test_overlong_uid_in_the_association_request_is_one_warning(
    node: Service, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    overlong = b"1.2.840.10008.5.1.4.1.1.1." + b"1" * 60  # 86 characters; 64 at most
    with socket.create_connection(("127.0.0.1", node.dicom_port)) as connection:
        connection.sendall(associate_rq(overlong))
        abort = connection.recv(10)  # the node answers A-ABORT (PS3.8 9.3.8) and closes
    assert abort[:1] == b"\x07"
    wait_for(lambda: bool(gate_lines(caplog_warnings)))
    [line] = gate_lines(caplog_warnings)
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        "association from 127.0.0.1 refused with "
        "A-ABORT (invalid_pdu_parameter_value): undecodable (ValueError)"
    )
    assert [r for r in pynetdicom_records(caplog_warnings) if r.levelno >= logging.WARNING] == []
    assert_no_tracebacks(caplog_warnings)


@pytest.mark.parametrize(
    ("pdu", "error"),
    [
        (associate_rq(calling=b"\xff\xfe\xc3"), "ValueError"),  # AE title not ASCII
        (b"\x01\x00" + struct.pack(">L", 20) + b"\xff" * 20, "ValueError"),  # noise
    ],
    ids=["non-ascii-ae-title", "noise"],
)
def test_undecodable_pdu_is_logged_without_tracebacks(
    node: Service, caplog_warnings: pytest.LogCaptureFixture, pdu: bytes, error: str
) -> None:
    with socket.create_connection(("127.0.0.1", node.dicom_port)) as connection:
        connection.sendall(pdu)
        abort = connection.recv(10)  # the node answers A-ABORT (PS3.8 9.3.8) and closes
    assert abort[:1] == b"\x07"
    wait_for(lambda: bool(gate_lines(caplog_warnings)))
    [line] = gate_lines(caplog_warnings)
    assert line.getMessage() == (
        "association from 127.0.0.1 refused with "
        f"A-ABORT (invalid_pdu_parameter_value): undecodable ({error})"
    )
    assert_no_tracebacks(caplog_warnings)


def test_connection_refused_is_reported_as_refused() -> None:
    port = free_port()  # nothing listens there
    ae = AE(ae_title="FRACTUREGW")
    ae.add_requested_context(VERIFICATION.decode())
    request = request_association(ae, "127.0.0.1", port, "STORESCP")
    assert not request.established
    reason = request.failure("destination")
    assert reason == (
        f"destination not reachable: connection refused by 127.0.0.1:{port} (nothing listening)"
    )
    assert "abort" not in reason


def test_outbox_row_says_connection_refused(
    tmp_path: Path, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    db: ResultsDb = open_results_db(f"sqlite:///{tmp_path / 'o.sqlite3'}", tmp_path / "storage")
    try:
        add_results(db, 1, ["pacs"])
        worker = make_worker(db, [destination(free_port())], FAST)
        worker.run_once()
        [view] = list_outbox(db.sessions)
        assert view.state is OutboxState.PENDING
        assert "connection refused" in (view.last_error or "")
        assert "aborted" not in (view.last_error or "")
    finally:
        db.engine.dispose()
    assert_no_tracebacks(caplog_warnings)

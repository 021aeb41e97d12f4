"""DICOM TLS: the SCP against dcmtk ``storescu +tls``, result delivery to ``storescp +tls``.

Certificates are made per test module with openssl (tests/helpers/tls.py), never committed.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from sqlalchemy import func, select

from config.settings import Destination, TlsSettings
from db.models import Instance
from db.results import OutboxState
from dicom_node.conformance import VERIFICATION_SOP_CLASS
from dicom_node.outbox import OutboxWorker, list_outbox
from dicom_node.peer import request_association
from dicom_node.tls import TlsConfigurationError, server_context
from gateway.service import Service
from tests.dicom_node.test_outbox_delivery import FAST, db
from tests.helpers.dcmtk import StoreSCP, run_storescp
from tests.helpers.node import NodeFactory
from tests.helpers.results_db import ResultsDb, add_results
from tests.helpers.tls import KeyPair, Pki, make_pki
from tests.helpers.tools import require_program

__all__ = ["db"]

pytestmark = pytest.mark.integration

CALLED = "FRACTUREGW"
DX = "dicom/highdicom/data/test_files/dx_image.dcm"

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # naming TLS 1.1 is deprecated
    TLS_1_1 = ssl.TLSVersion.TLSv1_1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_node_settings(pki: Pki, **tls: Any) -> dict[str, Any]:
    return {
        "tls": {
            "enabled": True,
            "certificate": str(pki.node.certificate),
            "private_key": str(pki.node.private_key),
            "ca_certificates": str(pki.ca),
            **tls,
        }
    }


@pytest.fixture
def tls_node(start_node: NodeFactory, pki: Pki) -> Service:
    return start_node(node=tls_node_settings(pki))


def instance_count(service: Service) -> int:
    with service.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def storescu(port: int, path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    program = require_program("storescu")
    return subprocess.run(
        [program, "-aet", "TESTSCU", "-aec", CALLED, *options, "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def with_certificate(pki: Pki, identity: KeyPair) -> tuple[str, ...]:
    """storescu options: TLS with ``identity``'s certificate, trusting the test authority."""
    return ("+tls", str(identity.private_key), str(identity.certificate), "+cf", str(pki.ca))


def test_unusable_certificate_file_stops_the_start(tmp_path: Path, pki: Pki) -> None:
    missing = TlsSettings(
        enabled=True,
        certificate=tmp_path / "missing.crt",
        private_key=pki.node.private_key,
        ca_certificates=pki.ca,
    )
    with pytest.raises(TlsConfigurationError, match=r"node\.tls\.certificate"):
        server_context(missing)
    wrong_key = missing.model_copy(
        update={"certificate": pki.node.certificate, "private_key": pki.sender.private_key}
    )
    with pytest.raises(TlsConfigurationError, match=r"node\.tls\.certificate"):
        server_context(wrong_key)


def test_storescu_over_tls_with_a_trusted_certificate_stores(
    tls_node: Service, pki: Pki, shared_dir: Path
) -> None:
    sent = storescu(tls_node.dicom_port, shared_dir / DX, *with_certificate(pki, pki.sender))
    assert sent.returncode == 0, sent.stderr
    assert instance_count(tls_node) == 1


def test_plain_tcp_to_the_tls_port_is_refused(
    tls_node: Service, pki: Pki, shared_dir: Path
) -> None:
    plain = storescu(tls_node.dicom_port, shared_dir / DX)
    assert plain.returncode != 0
    assert instance_count(tls_node) == 0
    sent = storescu(tls_node.dicom_port, shared_dir / DX, *with_certificate(pki, pki.sender))
    assert sent.returncode == 0, sent.stderr  # and the node still serves TLS senders


def test_certificate_from_an_unknown_authority_is_refused(
    tls_node: Service, pki: Pki, shared_dir: Path
) -> None:
    impostor = storescu(tls_node.dicom_port, shared_dir / DX, *with_certificate(pki, pki.impostor))
    assert impostor.returncode != 0
    assert instance_count(tls_node) == 0


@pytest.mark.parametrize("required", [True, False])
def test_sender_without_a_certificate_is_refused_when_one_is_required(
    start_node: NodeFactory, pki: Pki, shared_dir: Path, required: bool
) -> None:
    node = start_node(node=tls_node_settings(pki, require_client_certificate=required))
    anonymous = storescu(node.dicom_port, shared_dir / DX, "+tla", "+cf", str(pki.ca))
    if required:
        assert anonymous.returncode != 0
        assert instance_count(node) == 0
    else:
        assert anonymous.returncode == 0, anonymous.stderr
        assert instance_count(node) == 1


def handshake(port: int, context: ssl.SSLContext) -> str:
    """The TLS version agreed with ``127.0.0.1:port``; raises ``ssl.SSLError`` when refused."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return str(tls.version())


@pytest.fixture
def permissive_tls_server(pki: Pki) -> Iterator[int]:
    """A TLS server accepting any version, to show that a client really offers what it says."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.load_cert_chain(pki.node.certificate, pki.node.private_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            client.settimeout(10)
            try:
                with context.wrap_socket(client, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                client.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def test_tls_1_1_is_refused(tls_node: Service, pki: Pki, permissive_tls_server: int) -> None:
    old = pki.client_context(pki.sender, maximum_version=TLS_1_1)
    assert handshake(permissive_tls_server, old) == "TLSv1.1"  # the client does offer 1.1
    with pytest.raises(ssl.SSLError):
        handshake(tls_node.dicom_port, old)
    assert handshake(tls_node.dicom_port, pki.client_context(pki.sender)) in {"TLSv1.2", "TLSv1.3"}


def test_minimum_version_is_the_configured_one(start_node: NodeFactory, pki: Pki) -> None:
    node = start_node(node=tls_node_settings(pki, minimum_version="1.3"))
    tls_1_2 = pki.client_context(pki.sender, maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        handshake(node.dicom_port, tls_1_2)
    assert handshake(node.dicom_port, pki.client_context(pki.sender)) == "TLSv1.3"


def test_pynetdicom_sender_over_tls_is_accepted(tls_node: Service, pki: Pki) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    tls_args = (pki.client_context(pki.sender), "localhost")
    request = request_association(ae, "127.0.0.1", tls_node.dicom_port, CALLED, tls_args=tls_args)
    assert request.established, request.failure()
    try:
        assert int(request.assoc.send_c_echo().Status) == 0
    finally:
        request.assoc.release()


def test_idle_tls_clients_stall_nobody(start_node: NodeFactory, pki: Pki, shared_dir: Path) -> None:
    """Silent TCP connections and a half-sent ClientHello do not delay a TLS sender.

    pynetdicom's own server does the handshake in its accept loop: one such client would stop
    every other connection for as long as it stays. Here each handshake runs in its own thread
    under the ARTIM timer (30 s in this test, so a wait for it would show).
    """
    node = start_node(node={**tls_node_settings(pki), "artim_timeout": 30})
    port = node.dicom_port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's first bytes
    try:
        started = time.monotonic()
        sent = storescu(port, shared_dir / DX, *with_certificate(pki, pki.sender))
        elapsed = time.monotonic() - started
        assert sent.returncode == 0, sent.stderr
        assert elapsed < 15, f"the TLS sender waited {elapsed:.1f} s"
    finally:
        for sock in (*idle, half):
            sock.close()
    assert instance_count(node) == 1


def test_silent_tls_client_is_closed_after_the_artim_timeout(
    start_node: NodeFactory, pki: Pki
) -> None:
    node = start_node(node={**tls_node_settings(pki), "artim_timeout": 0.5})
    with socket.create_connection(("127.0.0.1", node.dicom_port)) as silent:
        silent.settimeout(10)
        started = time.monotonic()
        assert silent.recv(1) == b""
        assert time.monotonic() - started < 5


# Result delivery ---------------------------------------------------------------------------


def client_tls(pki: Pki) -> TlsSettings:
    """The node's TLS settings as a sender of results: its certificate, the test authority."""
    return TlsSettings(
        certificate=pki.node.certificate,
        private_key=pki.node.private_key,
        ca_certificates=pki.ca,
    )


@contextmanager
def tls_storescp(pki: Pki, identity: KeyPair, folder: Path) -> Iterator[StoreSCP]:
    """dcmtk ``storescp +tls`` presenting ``identity``, requiring client certificates from our CA.

    Its readiness probe trusts any server certificate, as the impostor's is from another CA.
    """
    probe = pki.client_context(pki.sender)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    options = ("+tls", str(identity.private_key), str(identity.certificate), "+cf", str(pki.ca))
    with run_storescp(folder, extra_args=options, tls_args=(probe, "localhost")) as scp:
        yield scp


def deliver_once(db: ResultsDb, pki: Pki, scp: StoreSCP, **destination: Any) -> int:
    """One outbox batch to ``scp`` over TLS as destination ``pacs``; how many rows it claimed."""
    pacs = Destination(
        name="pacs", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port, tls=True, **destination
    )
    worker = OutboxWorker(
        db.sessions, db.store, [pacs], FAST, calling_ae_title=CALLED, tls=client_tls(pki)
    )
    return worker.run_once()


def test_results_are_delivered_over_tls(db: ResultsDb, pki: Pki, tmp_path: Path) -> None:
    uids = add_results(db, 2, ["pacs"])
    with tls_storescp(pki, pki.destination, tmp_path / "received") as scp:
        assert deliver_once(db, pki, scp) == 2
        assert sorted(v.state for v in list_outbox(db.sessions)) == [OutboxState.SENT] * 2
        assert scp.received_sop_instance_uids() == dict.fromkeys(uids, 1)


@pytest.mark.parametrize(
    ("presented", "destination"),
    [("impostor", {}), ("destination", {"tls_server_name": "pacs.example.org"})],
    ids=["unknown-authority", "another-name"],
)
def test_destination_with_a_certificate_we_cannot_trust_gets_nothing(
    db: ResultsDb, pki: Pki, tmp_path: Path, presented: str, destination: dict[str, Any]
) -> None:
    """A certificate from an unknown authority, or naming another host: nothing is sent."""
    add_results(db, 1, ["pacs"])
    with tls_storescp(pki, getattr(pki, presented), tmp_path / "received") as scp:
        assert deliver_once(db, pki, scp, **destination) == 1
        [view] = list_outbox(db.sessions)
        assert view.state is OutboxState.PENDING  # retried later: the certificate may be fixed
        assert "TLS handshake failed" in (view.last_error or "")
        assert scp.received_files() == []

"""The network audit against real peers: pynetdicom and dcmtk senders, refused associations,
deliveries to dcmtk ``storescp``, and a local syslog collector (UDP, TCP) that is up or dead.
"""

from __future__ import annotations

import logging
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.metrics import make_registry
from audit.metrics import AuditCollector
from config.settings import Destination, OutboxSettings, Settings
from db.models import Study
from db.review import AuditEvent, Role
from dicom_node.conformance import CR_IMAGE_STORAGE, DX_PRESENTATION_STORAGE
from dicom_node.network_audit import NodeAudit
from dicom_node.outbox import OutboxWorker
from dicom_node.pdu import HEADER, PduType
from dicom_node.peer import request_association
from gateway.service import Service
from tests.api.conftest import login
from tests.api.world import World, add_user
from tests.dicom_node.test_scp import small_dx, store_datasets
from tests.helpers.dcmtk import StoreSCPFactory, StoreSCPMode, storescp_factory
from tests.helpers.hostile import associate, connect, read_pdu
from tests.helpers.node import NodeFactory
from tests.helpers.results_db import ResultsDb, add_results, open_results_db
from tests.helpers.syslog import SyslogMessage, syslog_listener, unresponsive_collector
from tests.helpers.tls import Pki, make_pki
from tests.helpers.tools import require_program

__all__ = ["storescp_factory"]

pytestmark = pytest.mark.integration

CALLED = "FRACTUREGW"
TRANSFERRED = "110104"
SECURITY_ALERT = "110113"
ACTIVITY = "110100"
OUR_PACKAGES = {"audit", "dicom_node", "gateway", "db", "config", "api"}


def wait_rows(
    sessions: sessionmaker[Session],
    event_id: str,
    count: int,
    *,
    where: Callable[[AuditEvent], bool] = lambda _row: True,
    timeout_s: float = 30.0,
) -> list[AuditEvent]:
    """Poll until ``count`` matching audit rows exist; return them in insertion order."""
    deadline = time.monotonic() + timeout_s
    while True:
        with sessions() as session:
            rows = [
                row
                for row in session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.event_id_code == event_id)
                    .order_by(AuditEvent.id)
                )
                if where(row)
            ]
        if len(rows) >= count:
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(rows)} audit rows {event_id}, expected {count}")
        time.sleep(0.05)


def one_study(count: int, patient_id: str, **attrs: object) -> list[Dataset]:
    study_uid = generate_uid()
    return [
        small_dx(StudyInstanceUID=study_uid, PatientID=patient_id, **attrs) for _ in range(count)
    ]


def study_id(service: Service, uid: str) -> int:
    with service.sessions() as session:
        found = session.scalar(select(Study.id).where(Study.study_instance_uid == uid))
    assert found is not None
    return found


# Instances received ---------------------------------------------------------------------------
def test_instances_received_are_audited_per_association_and_study(node: Service) -> None:
    study_a = one_study(3, "PAT-A")
    study_b = one_study(1, "PAT-B")
    assert store_datasets(node.dicom_port, study_a + study_b) == [0] * 4

    rows = wait_rows(node.sessions, TRANSFERRED, 2)
    assert len(rows) == 2, "one record per association and study"
    by_study = {row.study_instance_uid: row for row in rows}
    uid_a, uid_b = str(study_a[0].StudyInstanceUID), str(study_b[0].StudyInstanceUID)
    assert set(by_study) == {uid_a, uid_b}
    a, b = by_study[uid_a], by_study[uid_b]
    assert (a.instance_count, a.patient_id, b.instance_count, b.patient_id) == (
        3,
        "PAT-A",
        1,
        "PAT-B",
    )
    for row, uid in ((a, uid_a), (b, uid_b)):
        assert (row.action, row.outcome) == ("C", 0)
        assert row.event_id_meaning == "DICOM Instances Transferred"
        assert (row.actor, row.client_ip) == ("dicom:TESTSCU", "127.0.0.1")
        assert (row.object_type, row.object_id) == ("study", str(study_id(node, uid)))
        # The free-text detail names AE titles and counts, never the patient or the study.
        assert row.detail is not None
        assert "TESTSCU" in row.detail
        assert uid not in row.detail
        assert "PAT-" not in row.detail

    # An identical resend: the node already held the instances (EventActionCode R).
    assert store_datasets(node.dicom_port, study_a) == [0] * 3
    (resend,) = wait_rows(node.sessions, TRANSFERRED, 1, where=lambda r: r.action == "R")
    assert (resend.study_instance_uid, resend.instance_count) == (uid_a, 3)


def test_a_dcmtk_transfer_is_audited(node: Service, shared_dir: Path) -> None:
    storescu = require_program("storescu")
    dx = shared_dir / "dicom/highdicom/data/test_files/dx_image.dcm"
    sent = subprocess.run(
        [storescu, "-aet", "DCMTKSCU", "-aec", CALLED, "127.0.0.1", str(node.dicom_port), str(dx)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    (row,) = wait_rows(node.sessions, TRANSFERRED, 1)
    header = dcmread(dx, stop_before_pixels=True)
    assert row.study_instance_uid == header.StudyInstanceUID
    assert (row.actor, row.instance_count, row.action) == ("dicom:DCMTKSCU", 1, "C")


# Refused associations -------------------------------------------------------------------------
def test_wrong_called_ae_title_is_a_security_alert(node: Service) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    assert request_association(ae, "127.0.0.1", node.dicom_port, "SOMEONEELSE").rejected
    (row,) = wait_rows(node.sessions, SECURITY_ALERT, 1)
    assert (row.event_type_code, row.event_type_meaning) == ("110126", "Node Authentication")
    assert (row.action, row.outcome) == ("E", 4)
    assert (row.actor, row.client_ip) == ("dicom:TESTSCU", "127.0.0.1")
    assert (row.object_type, row.object_id) == ("node", "127.0.0.1")
    assert row.detail is not None
    assert "called AE title not recognised" in row.detail


def test_unknown_calling_ae_title_is_a_security_alert(start_node: NodeFactory) -> None:
    node = start_node(node={"known_sources": [{"ae_title": "PACS1"}]})
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    assert request_association(ae, "127.0.0.1", node.dicom_port, CALLED).rejected
    (row,) = wait_rows(node.sessions, SECURITY_ALERT, 1)
    assert row.actor == "dicom:INTRUDER"
    assert row.detail is not None
    assert "calling AE title not recognised" in row.detail


def test_protocol_violations_are_security_alerts(node: Service) -> None:
    junk = connect(node.dicom_port)
    junk.sendall(HEADER.pack(0x55, 0, 4) + b"junk")  # no such PDU type
    refused = read_pdu(junk)
    assert refused is not None
    assert refused.pdu_type == PduType.ABORT
    junk.close()
    inside = associate(node.dicom_port, "TESTSCU", CALLED)
    inside.sendall(HEADER.pack(PduType.P_DATA_TF, 0, 0xFFFFFFFF))
    reply = read_pdu(inside)
    assert reply is not None
    assert reply.pdu_type == PduType.ABORT
    inside.close()

    rows = wait_rows(node.sessions, SECURITY_ALERT, 2)
    by_actor = {row.actor: row.detail or "" for row in rows}
    assert set(by_actor) == {"anonymous", "dicom:TESTSCU"}
    assert "unrecognized_pdu" in by_actor["anonymous"]
    assert "P_DATA_TF declares 4294967295 bytes" in by_actor["dicom:TESTSCU"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_failed_tls_handshake_is_a_security_alert(start_node: NodeFactory, pki: Pki) -> None:
    node = start_node(
        node={
            "tls": {
                "enabled": True,
                "certificate": str(pki.node.certificate),
                "private_key": str(pki.node.private_key),
                "ca_certificates": str(pki.ca),
            }
        }
    )
    ae = AE(ae_title="PLAINSCU")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    assert not request_association(ae, "127.0.0.1", node.dicom_port, CALLED).established
    (row,) = wait_rows(node.sessions, SECURITY_ALERT, 1)
    assert (row.actor, row.client_ip) == ("anonymous", "127.0.0.1")
    assert row.detail is not None
    assert "TLS handshake failed" in row.detail


# Results sent ---------------------------------------------------------------------------------
FAST = OutboxSettings(
    max_attempts=1,
    backoff_base_s=0.05,
    backoff_max_s=0.1,
    poll_interval_s=0.05,
    association_timeout_s=5,
    lease_s=1.0,
)


def test_results_delivered_by_the_service_are_audited_on_the_send_side(
    start_node: NodeFactory, storescp_factory: StoreSCPFactory
) -> None:
    scp = storescp_factory()
    node = start_node(
        worker=True,
        destinations=[
            {"name": "pacs", "ae_title": "STORESCP", "host": "127.0.0.1", "port": scp.port}
        ],
        outbox=FAST.model_dump(),
    )
    uids = add_results(ResultsDb(node.engine, node.sessions, node.store), 3, ["pacs"])

    (row,) = wait_rows(node.sessions, TRANSFERRED, 1)
    assert scp.received_sop_instance_uids() == dict.fromkeys(uids, 1)
    with node.sessions() as session:
        study = session.scalars(select(Study)).one()
    assert (row.action, row.outcome, row.instance_count) == ("R", 0, 3)
    assert (row.actor, row.client_ip) == ("dicom:FRACTUREGW", "127.0.0.1")
    assert (row.study_instance_uid, row.object_id) == (study.study_instance_uid, str(study.id))
    assert row.detail is not None
    assert "to pacs (STORESCP@127.0.0.1): delivered" in row.detail


@pytest.fixture
def results_db(tmp_path: Path) -> Iterator[ResultsDb]:
    opened = open_results_db(f"sqlite:///{tmp_path / 'sent.sqlite3'}", tmp_path / "storage")
    yield opened
    opened.engine.dispose()


@pytest.fixture
def node_audit(results_db: ResultsDb, tmp_path: Path) -> Iterator[Callable[..., NodeAudit]]:
    started: list[NodeAudit] = []

    def make(destinations: Sequence[Destination]) -> NodeAudit:
        settings = Settings(home=tmp_path, destinations=list(destinations))
        audit = NodeAudit.from_settings(settings, results_db.sessions)
        audit.start()
        started.append(audit)
        return audit

    yield make
    for audit in started:
        audit.stop()


def test_failed_deliveries_are_audited_with_their_outcome(
    results_db: ResultsDb,
    storescp_factory: StoreSCPFactory,
    node_audit: Callable[..., NodeAudit],
) -> None:
    add_results(results_db, 2, ["pacs"])
    scp = storescp_factory(StoreSCPMode.REFUSE)
    destination = Destination(name="pacs", ae_title="STORESCP", host="127.0.0.1", port=scp.port)
    audit = node_audit([destination])
    worker = OutboxWorker(
        results_db.sessions,
        results_db.store,
        [destination],
        FAST,
        calling_ae_title="FRACTUREGW",
        on_attempts=audit.deliveries_attempted,
    )
    assert worker.run_once() == 2
    (row,) = wait_rows(results_db.sessions, TRANSFERRED, 1)
    # max_attempts = 1: the refused delivery is given up at once (serious failure, 8).
    assert (row.action, row.outcome, row.instance_count) == ("R", 8, 2)
    with results_db.sessions() as session:
        study = session.scalars(select(Study)).one()
    assert (row.study_instance_uid, row.patient_id) == (study.study_instance_uid, None)
    assert row.detail is not None
    assert "given up" in row.detail


# Syslog ---------------------------------------------------------------------------------------
def syslog_node(start_node: NodeFactory, transport: str, port: int, **syslog: object) -> Service:
    return start_node(
        audit={
            "syslog": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": port,
                "transport": transport,
                **syslog,
            }
        }
    )


def event_code(message: SyslogMessage) -> str | None:
    event_id = message.xml().find("EventIdentification/EventID")
    return None if event_id is None else event_id.get("csd-code")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_network_events_reach_a_syslog_collector(start_node: NodeFactory, transport: str) -> None:
    with syslog_listener(transport) as listener:
        node = syslog_node(start_node, transport, listener.port)
        datasets = one_study(2, "PAT-SYSLOG")
        assert store_datasets(node.dicom_port, datasets) == [0, 0]
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CR_IMAGE_STORAGE)
        assert request_association(ae, "127.0.0.1", node.dicom_port, "SOMEONEELSE").rejected
        received = listener.wait_for(3)  # the node's start, the transfer, the alert

    by_code = {event_code(m): m for m in received}
    assert set(by_code) == {ACTIVITY, TRANSFERRED, SECURITY_ALERT}
    assert all((m.facility, m.app_name) == (10, "fracture-gateway") for m in received)
    assert (by_code[TRANSFERRED].severity, by_code[SECURITY_ALERT].severity) == (5, 4)
    transfer = by_code[TRANSFERRED].xml()
    objects = {
        o.get("ParticipantObjectTypeCode"): o
        for o in transfer.findall("ParticipantObjectIdentification")
    }
    assert objects["2"].get("ParticipantObjectID") == str(datasets[0].StudyInstanceUID)
    (sop_class,) = objects["2"].findall("SOPClass")
    assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (
        DX_PRESENTATION_STORAGE,
        "2",
    )
    assert objects["1"].get("ParticipantObjectID") == "PAT-SYSLOG"
    requestor = [
        p.get("UserID")
        for p in transfer.findall("ActiveParticipant")
        if p.get("UserIsRequestor") == "true"
    ]
    assert requestor == ["TESTSCU"]
    alert = by_code[SECURITY_ALERT].xml()
    assert alert.findtext("EventIdentification/EventOutcomeDescription", "").endswith(
        "called AE title not recognised"
    )
    assert listener.errors == []


def test_a_dead_collector_neither_slows_nor_fails_ingest(start_node: NodeFactory) -> None:
    with unresponsive_collector() as port:
        # A connection attempt hangs for 30 s; a node that waited for it would show it.
        node = syslog_node(start_node, "tcp", port, queue_size=2, timeout_s=30)
        durations = []
        for _ in range(8):
            started = time.monotonic()
            assert store_datasets(node.dicom_port, one_study(2, "PAT-DEAD")) == [0, 0]
            durations.append(time.monotonic() - started)
        rows = wait_rows(node.sessions, TRANSFERRED, 8)
        assert node.audit is not None
        metrics = generate_latest(
            make_registry(node.sessions, [AuditCollector(node.audit.trail)])
        ).decode()
    assert max(durations) < 10, durations
    assert len(rows) == 8  # the audit table does not depend on the collector
    # 9 messages (the start, 8 transfers): one held by the sender, 2 queued, the rest dropped.
    assert 'fracture_gateway_audit_syslog_messages_total{outcome="dropped"} 6.0' in metrics
    assert 'fracture_gateway_audit_syslog_messages_total{outcome="sent"} 0.0' in metrics
    assert "fracture_gateway_audit_syslog_queue_depth 2.0" in metrics
    assert 'fracture_gateway_audit_records_total{outcome="dropped"} 0.0' in metrics


def test_patient_data_never_reaches_the_log(
    start_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with syslog_listener("udp") as listener:
        node = syslog_node(start_node, "udp", listener.port)
        datasets = one_study(1, "SECRET-PID-4711", PatientName="SECRET^NAME")
        assert store_datasets(node.dicom_port, datasets) == [0]
        listener.wait_for(2)
        wait_rows(node.sessions, TRANSFERRED, 1)
    ours = [r for r in caplog.records if r.name.split(".")[0] in OUR_PACKAGES]
    assert ours, "the node logged nothing at DEBUG: the check would prove nothing"
    text = "".join(f"{r.getMessage()} {r.args}" for r in ours)
    for secret in ("SECRET-PID-4711", "SECRET^NAME", str(datasets[0].StudyInstanceUID)):
        assert secret not in text


def test_node_start_and_stop_are_audited(node: Service) -> None:
    (start,) = wait_rows(node.sessions, ACTIVITY, 1)
    assert (start.event_type_code, start.actor) == ("110120", "application:fracture-gateway-node")
    node.stop()
    stop = wait_rows(node.sessions, ACTIVITY, 2)[-1]
    assert stop.event_type_code == "110121"


def test_audit_messages_are_valid_xml_for_every_event(start_node: NodeFactory) -> None:
    """Every message the node sent parses, and names its event in the DCM scheme."""
    with syslog_listener("tcp") as listener:
        node = syslog_node(start_node, "tcp", listener.port)
        assert store_datasets(node.dicom_port, one_study(1, "PAT-X")) == [0]
        node.stop()
        received = listener.wait_for(3)
    for message in received:
        root = message.xml()
        assert isinstance(root, ET.Element)
        event_id = root.find("EventIdentification/EventID")
        assert event_id is not None
        assert event_id.get("codeSystemName") == "DCM"
        assert root.find("AuditSourceIdentification") is not None
        assert root.findall("ActiveParticipant")


# Who reads it, and on which database -----------------------------------------------------------
def test_only_admins_read_the_participant_identifiers(node: Service) -> None:
    datasets = one_study(2, "PAT-API")
    assert store_datasets(node.dicom_port, datasets) == [0, 0]
    wait_rows(node.sessions, TRANSFERRED, 1)
    world = World(node.settings, node.engine, node.sessions, node.store, node.settings.home)
    add_user(world, "boss", Role.ADMIN)
    add_user(world, "rad", Role.RADIOLOGIST)
    with TestClient(create_app(node.settings, node.sessions, store=node.store)) as client:
        admin, radiologist = login(client, "boss"), login(client, "rad")
        page = client.get("/api/admin/audit?event_id=110104", headers=admin).json()
        refused = client.get("/api/admin/audit?event_id=110104", headers=radiologist)
    (item,) = page["items"]
    assert (item["study_instance_uid"], item["patient_id"], item["instance_count"]) == (
        str(datasets[0].StudyInstanceUID),
        "PAT-API",
        2,
    )
    assert refused.status_code == 403
    assert "PAT-API" not in refused.text


def test_network_audit_on_each_database(start_node: NodeFactory, database_url: str) -> None:
    node = start_node(database={"url": database_url})
    datasets = one_study(2, "PAT-DB")
    assert store_datasets(node.dicom_port, datasets) == [0, 0]
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    assert request_association(ae, "127.0.0.1", node.dicom_port, "SOMEONEELSE").rejected
    (received,) = wait_rows(node.sessions, TRANSFERRED, 1)
    (alert,) = wait_rows(node.sessions, SECURITY_ALERT, 1)
    assert (received.instance_count, received.patient_id) == (2, "PAT-DB")
    assert received.object_id == str(study_id(node, str(datasets[0].StudyInstanceUID)))
    assert alert.event_type_code == "110126"

"""The outbox worker against real peers: dcmtk ``storescp`` in faulty modes and a pynetdicom SCP.

Small backoff settings keep every scenario to a few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import SecondaryCaptureImageStorage
from pynetdicom.transport import ThreadedAssociationServer

from config.settings import Destination, OutboxSettings
from db.results import OutboxState
from dicom_node.outbox import OutboxWorker, StoreResponseStatus, list_outbox, outbox_depths
from tests.helpers.dcmtk import StoreSCPFactory, StoreSCPMode, storescp_factory
from tests.helpers.results_db import ResultsDb, add_results, open_results_db
from tests.helpers.tools import free_port

__all__ = ["storescp_factory"]

pytestmark = pytest.mark.integration

FAST = OutboxSettings(
    max_attempts=3,
    max_age_s=3600,
    backoff_base_s=0.05,
    backoff_max_s=0.2,
    batch_size=32,
    poll_interval_s=0.05,
    association_timeout_s=5,
    lease_s=1.0,
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ResultsDb]:
    opened = open_results_db(f"sqlite:///{tmp_path / 'outbox.sqlite3'}", tmp_path / "storage")
    yield opened
    opened.engine.dispose()


def destination(port: int, name: str = "pacs", ae_title: str = "STORESCP") -> Destination:
    return Destination(name=name, ae_title=ae_title, host="127.0.0.1", port=port)


def make_worker(
    db: ResultsDb, destinations: list[Destination], settings: OutboxSettings = FAST
) -> OutboxWorker:
    return OutboxWorker(
        db.sessions, db.store, destinations, settings, calling_ae_title="FRACTUREGW"
    )


def states(db: ResultsDb) -> list[OutboxState]:
    return sorted(view.state for view in list_outbox(db.sessions))


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def drain(worker: OutboxWorker, db: ResultsDb, timeout_s: float = 30.0) -> None:
    """Run batches until nothing is pending or sending."""

    def settled() -> bool:
        worker.run_once()
        depths = outbox_depths(db.sessions)
        return depths[OutboxState.PENDING] == depths[OutboxState.SENDING] == 0

    wait_until(settled, timeout_s)


def test_delivers_every_object_once(db: ResultsDb, storescp_factory: StoreSCPFactory) -> None:
    uids = add_results(db, 3, ["pacs"])
    scp = storescp_factory()
    worker = make_worker(db, [destination(scp.port)])
    assert worker.run_once() == 3
    assert states(db) == [OutboxState.SENT] * 3
    assert all(v.last_status == StoreResponseStatus.SUCCESS for v in list_outbox(db.sessions))
    assert worker.run_once() == 0
    received = scp.received_sop_instance_uids()
    assert received == dict.fromkeys(uids, 1)
    # Sent byte for byte as stored: the data sets after the file meta are identical.
    stored = {uid: next((db.store.root / "results").rglob(f"{uid}.dcm")) for uid in uids}
    for copy in scp.received_files():
        uid = str(dcmread(copy, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(copy) == dataset_bytes(stored[uid])


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a DICOM file, without preamble and file meta (PS3.10 7.1)."""
    meta = read_file_meta_info(path)
    data = path.read_bytes()
    return data[132 + 12 + int(meta.FileMetaInformationGroupLength) :]


def test_refused_association_is_retried_then_dead_lettered(
    db: ResultsDb, storescp_factory: StoreSCPFactory
) -> None:
    add_results(db, 2, ["pacs"])
    scp = storescp_factory(StoreSCPMode.REFUSE)
    worker = make_worker(db, [destination(scp.port)])
    assert worker.run_once() == 2
    views = list_outbox(db.sessions)
    assert {(v.state, v.attempts) for v in views} == {(OutboxState.PENDING, 1)}
    assert all("rejected" in (v.last_error or "") for v in views), [v.last_error for v in views]
    drain(worker, db)
    views = list_outbox(db.sessions)
    assert {(v.state, v.attempts) for v in views} == {(OutboxState.DEAD_LETTER, FAST.max_attempts)}
    assert scp.received_files() == []


def test_abort_during_transfer_is_retried_and_later_delivered(
    db: ResultsDb, storescp_factory: StoreSCPFactory
) -> None:
    uids = add_results(db, 2, ["pacs"])
    aborting = storescp_factory(StoreSCPMode.ABORT_DURING, name="aborting")
    worker = make_worker(db, [destination(aborting.port)])
    worker.run_once()
    views = list_outbox(db.sessions)
    assert {(v.state, v.attempts) for v in views} == {(OutboxState.PENDING, 1)}
    assert all("abort" in (v.last_error or "") for v in views)
    aborting.stop()
    healthy = storescp_factory(port=aborting.port, name="healthy")
    drain(worker, db)
    assert states(db) == [OutboxState.SENT] * 2
    assert healthy.received_sop_instance_uids() == dict.fromkeys(uids, 1)


def test_destination_down_then_up_receives_each_object_once(
    db: ResultsDb, storescp_factory: StoreSCPFactory
) -> None:
    uids = add_results(db, 3, ["pacs"])
    port = free_port()
    worker = make_worker(db, [destination(port)], FAST.model_copy(update={"max_attempts": 1000}))
    worker.start()
    try:
        wait_until(lambda: all(v.attempts >= 2 for v in list_outbox(db.sessions)))
        assert OutboxState.SENT not in states(db)
        scp = storescp_factory(port=port)
        worker.wake()
        wait_until(lambda: states(db) == [OutboxState.SENT] * 3)
        time.sleep(0.3)  # a few more polls: nothing is sent again
    finally:
        worker.stop()
    assert scp.received_sop_instance_uids() == dict.fromkeys(uids, 1)


def test_pending_rows_survive_a_restart(
    db: ResultsDb, storescp_factory: StoreSCPFactory, tmp_path: Path
) -> None:
    uids = add_results(db, 2, ["pacs"])
    scp = storescp_factory()
    # A first process claims the rows and dies before sending anything.
    from dicom_node.outbox import claim_due

    claim_due(db.sessions, limit=10, lease_s=FAST.lease_s)
    db.engine.dispose()
    assert outbox_depths(db.sessions)[OutboxState.SENDING] == 2

    restarted = open_results_db(f"sqlite:///{tmp_path / 'outbox.sqlite3'}", db.store.root)
    try:
        worker = make_worker(restarted, [destination(scp.port)])
        assert worker.run_once() == 0  # the lease has not lapsed yet
        time.sleep(FAST.lease_s + 0.1)
        assert worker.run_once() == 2
        assert states(restarted) == [OutboxState.SENT] * 2
        assert {v.attempts for v in list_outbox(restarted.sessions)} == {2}
    finally:
        restarted.engine.dispose()
    assert scp.received_sop_instance_uids() == dict.fromkeys(uids, 1)


class StatusSCP:
    """A pynetdicom Storage SCP answering every C-STORE with one chosen status."""

    def __init__(self, status: int, *, sop_classes: tuple[str, ...] = ()) -> None:
        self.status = status
        self.received: list[str] = []
        ae = AE(ae_title="STATUSSCP")
        for sop_class in sop_classes or (SecondaryCaptureImageStorage,):
            ae.add_supported_context(sop_class)
        self.server: ThreadedAssociationServer = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._handle)],
        )
        self.port = int(self.server.server_address[1])

    def _handle(self, event: Event) -> int:
        dataset: Dataset = event.dataset
        self.received.append(str(dataset.SOPInstanceUID))
        return self.status

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def status_scp() -> Iterator[Callable[..., StatusSCP]]:
    started: list[StatusSCP] = []

    def start(status: int, **kwargs: tuple[str, ...]) -> StatusSCP:
        scp = StatusSCP(status, **kwargs)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.mark.parametrize(
    "status",
    [
        StoreResponseStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        StoreResponseStatus.CANNOT_UNDERSTAND,
        StoreResponseStatus.SOP_CLASS_NOT_SUPPORTED,
    ],
)
def test_status_a_retry_cannot_fix_is_dead_lettered_at_once(
    db: ResultsDb, status_scp: Callable[..., StatusSCP], status: int
) -> None:
    add_results(db, 1, ["pacs"])
    scp = status_scp(status)
    worker = make_worker(db, [destination(scp.port, ae_title="STATUSSCP")])
    worker.run_once()
    (view,) = list_outbox(db.sessions)
    assert (view.state, view.attempts, view.last_status) == (OutboxState.DEAD_LETTER, 1, status)
    assert len(scp.received) == 1


def test_out_of_resources_is_retried(db: ResultsDb, status_scp: Callable[..., StatusSCP]) -> None:
    add_results(db, 1, ["pacs"])
    scp = status_scp(StoreResponseStatus.OUT_OF_RESOURCES)
    worker = make_worker(db, [destination(scp.port, ae_title="STATUSSCP")])
    worker.run_once()
    (view,) = list_outbox(db.sessions)
    assert (view.state, view.last_status) == (OutboxState.PENDING, 0xA700)
    scp.status = StoreResponseStatus.COERCION_OF_DATA_ELEMENTS
    drain(worker, db)
    (view,) = list_outbox(db.sessions)
    assert (view.state, view.last_status) == (OutboxState.SENT, 0xB000)
    assert len(scp.received) == 2


def test_peer_without_the_sop_class_gives_a_dead_letter(
    db: ResultsDb, status_scp: Callable[..., StatusSCP]
) -> None:
    from pynetdicom.sop_class import CTImageStorage

    add_results(db, 1, ["pacs"])
    scp = status_scp(0, sop_classes=(CTImageStorage,))
    worker = make_worker(db, [destination(scp.port, ae_title="STATUSSCP")])
    worker.run_once()
    (view,) = list_outbox(db.sessions)
    assert view.state is OutboxState.DEAD_LETTER
    assert "no presentation context" in (view.last_error or "")
    assert scp.received == []


def test_one_association_per_destination_per_batch(
    db: ResultsDb, status_scp: Callable[..., StatusSCP]
) -> None:
    add_results(db, 4, ["a", "b"])
    a, b = status_scp(0), status_scp(0)
    associations: list[str] = []
    for name, scp in (("a", a), ("b", b)):
        scp.server.bind(evt.EVT_ACCEPTED, lambda _event, n=name: associations.append(n))
    worker = make_worker(
        db,
        [destination(a.port, "a", "STATUSSCP"), destination(b.port, "b", "STATUSSCP")],
    )
    assert worker.run_once() == 8
    assert sorted(associations) == ["a", "b"]
    assert len(a.received) == len(b.received) == 4


def test_unconfigured_destination_is_a_dead_letter(db: ResultsDb) -> None:
    add_results(db, 1, ["gone"])
    worker = make_worker(db, [])
    worker.run_once()
    (view,) = list_outbox(db.sessions)
    assert (view.state, view.last_error) == (OutboxState.DEAD_LETTER, "destination not configured")


def test_missing_result_file_is_a_dead_letter(
    db: ResultsDb, status_scp: Callable[..., StatusSCP]
) -> None:
    (uid,) = add_results(db, 1, ["pacs"])
    for path in (db.store.root / "results").rglob(f"{uid}.dcm"):
        path.unlink()
    scp = status_scp(0)
    worker = make_worker(db, [destination(scp.port, ae_title="STATUSSCP")])
    worker.run_once()
    (view,) = list_outbox(db.sessions)
    assert view.state is OutboxState.DEAD_LETTER
    assert "unusable" in (view.last_error or "")


def test_unexpected_fault_while_sending_is_retried(
    db: ResultsDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dicom_node.outbox

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("network stack fault")

    add_results(db, 2, ["pacs"])
    monkeypatch.setattr(dicom_node.outbox, "send_to_destination", broken)
    worker = make_worker(db, [destination(free_port())])
    assert worker.run_once() == 2
    views = list_outbox(db.sessions)
    assert {(v.state, v.attempts) for v in views} == {(OutboxState.PENDING, 1)}
    assert {v.last_error for v in views} == {"unexpected RuntimeError while sending"}

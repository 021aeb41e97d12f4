"""C-STORE data sets written to storage while they arrive, and recorded without holding the
database's write lock across the rename and the folder fsync."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from db.models import Instance
from dicom_node.conformance import DX_PRESENTATION_STORAGE, StoreStatus
from dicom_node.ingest import file_meta_for
from dicom_node.receiving import CHUNK_BYTES, IncomingDataSet
from dicom_node.storage import InstanceStore
from gateway.service import Service
from tests.dicom_node.test_scp import (
    CALLED,
    count,
    encode,
    files_under,
    small_dx,
    store_datasets,
    stored_rows,
)


def eventually(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def large_dx(side: int = 1448, **attrs: object) -> Dataset:
    """A 16-bit DX of ``side`` x ``side`` pixels (4 MB at the default), distinct pixel values."""
    ds = small_dx(**attrs)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelData = bytes(range(256)) * (side * side * 2 // 256) + b"\x00" * (side * side * 2 % 256)
    return ds


# -- the temporary file, written in pieces ------------------------------------------------------


@pytest.mark.parametrize("fragment", [1, 7, 65524, CHUNK_BYTES + 3])
def test_streamed_file_is_what_a_whole_write_gives(tmp_path: Path, fragment: int) -> None:
    """Same bytes and digest as writing the data set at once, however it is cut up."""
    store = InstanceStore(tmp_path)
    data = encode(large_dx(side=800), is_implicit_vr=False, is_little_endian=True)
    meta = file_meta_for(DX_PRESENTATION_STORAGE, "1.2.3.4", ExplicitVRLittleEndian)
    whole_path, whole_digest = store.write_temporary(meta, data)

    incoming = IncomingDataSet(store, meta)
    for offset in range(0, len(data), fragment):
        incoming.write(data[offset : offset + fragment])
    received = incoming.finish()
    assert received.durable() == whole_digest
    assert received.path.read_bytes() == whole_path.read_bytes()
    assert received.prefix == data[: len(received.prefix)]
    assert received.data_set_length == len(data)
    received.discard()
    assert not received.path.exists()


def test_discarded_mid_stream_leaves_no_file(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    meta = file_meta_for(DX_PRESENTATION_STORAGE, "1.2.3.4", ExplicitVRLittleEndian)
    incoming = IncomingDataSet(store, meta)
    incoming.write(b"\x01" * (3 * CHUNK_BYTES))
    incoming.discard()
    incoming.write(b"\x02" * CHUNK_BYTES)  # a late fragment after an abort is dropped
    assert files_under(tmp_path) == []


# -- through the SCP ----------------------------------------------------------------------------


def test_data_set_reaches_the_disk_before_its_last_fragment(node: Service) -> None:
    """Most of a 4 MB data set is on disk while the sender still holds its last PDUs."""
    ds = large_dx()
    data = encode(ds, is_implicit_vr=False, is_little_endian=True)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=CALLED)
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = DX_PRESENTATION_STORAGE
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 0
    request.DataSet = BytesIO(data)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context_id = assoc.accepted_contexts[0].context_id
    pdus = list(message.encode_msg(context_id, 16384))
    held_back = 8  # 128 KiB
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    socket = assoc.dul.socket
    assert socket is not None

    def send(primitives: list) -> None:  # type: ignore[type-arg]
        for primitive in primitives:
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            socket.send(pdu.encode())

    def partial_file_size() -> int:
        return sum(p.stat().st_size for p in node.store.tmp_dir.glob("*.part"))

    try:
        send(pdus[:-held_back])
        assert eventually(lambda: partial_file_size() >= 3 * CHUNK_BYTES)
        assert count(node, Instance) == 0
        send(pdus[-held_back:])
        _, response = assoc.dimse.get_msg(block=True)
        assert response is not None
        assert response.Status == StoreStatus.SUCCESS
    finally:
        assoc._reactor_checkpoint.set()
        assoc.release()
    (row,) = stored_rows(node)
    stored = dcmread(node.store.absolute(row.storage_path))
    assert stored.PixelData == ds.PixelData
    assert files_under(node.store.tmp_dir) == []


def test_last_pdu_with_several_fragments_is_left_to_pynetdicom_and_stored(node: Service) -> None:
    """A P-DATA-TF carrying a middle and the final fragment: not consumed early, not lost."""
    ds = large_dx(side=600)
    data = encode(ds, is_implicit_vr=False, is_little_endian=True)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=CALLED)
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 9
    request.AffectedSOPClassUID = DX_PRESENTATION_STORAGE
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 0
    request.DataSet = BytesIO(data)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context_id = assoc.accepted_contexts[0].context_id
    primitives = list(message.encode_msg(context_id, 16384))
    # Merge the last two data PDUs into one PDU of two PDVs (PS3.8 9.3.5 allows several).
    last = primitives.pop()
    merged = primitives[-1].presentation_data_value_list + last.presentation_data_value_list
    primitives[-1].presentation_data_value_list = [list(value) for value in merged]  # type: ignore[misc]
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    socket = assoc.dul.socket
    assert socket is not None
    try:
        for primitive in primitives:
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            socket.send(pdu.encode())
        _, response = assoc.dimse.get_msg(block=True)
        assert response is not None
        assert response.Status == StoreStatus.SUCCESS
    finally:
        assoc._reactor_checkpoint.set()
        assoc.release()
    (row,) = stored_rows(node)
    assert dcmread(node.store.absolute(row.storage_path)).PixelData == ds.PixelData


def test_scp_streams_with_our_dimse_provider(node: Service) -> None:
    """Every association the node accepts writes data sets as they arrive."""
    from dicom_node.dimse_stream import StreamingDIMSE

    seen: list[type] = []
    ds = large_dx(side=600)
    original = StreamingDIMSE._complete

    def complete(self: StreamingDIMSE, *args: object) -> None:
        seen.append(type(self))
        original(self, *args)  # type: ignore[arg-type]

    StreamingDIMSE._complete = complete  # type: ignore[method-assign]
    try:
        assert store_datasets(node.dicom_port, [ds]) == [StoreStatus.SUCCESS]
    finally:
        StreamingDIMSE._complete = original  # type: ignore[method-assign]
    assert seen == [StreamingDIMSE]
    assert count(node, Instance) == 1


def test_rename_and_folder_fsync_happen_outside_the_write_transaction(
    node: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a file is moved into place, another writer can take SQLite's write lock at once."""
    database = node.settings.home / "fracture-gateway.sqlite3"
    assert database.is_file()
    lock_free: list[bool] = []
    place = InstanceStore.place

    def place_checking_lock(self: InstanceStore, tmp: Path, final: Path) -> bool:
        other = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            lock_free.append(True)
        except sqlite3.OperationalError:  # "database is locked": someone holds it
            lock_free.append(False)
        finally:
            other.close()
        return place(self, tmp, final)

    monkeypatch.setattr(InstanceStore, "place", place_checking_lock)
    study = generate_uid()
    datasets = [large_dx(side=700, StudyInstanceUID=study) for _ in range(3)]
    assert store_datasets(node.dicom_port, datasets) == [StoreStatus.SUCCESS] * 3
    assert lock_free == [True, True, True]
    assert count(node, Instance) == 3


def test_concurrent_associations_store_one_study_without_loss(node: Service) -> None:
    """Four senders, one study: distinct images and one identical image sent by all."""
    study, series = generate_uid(), generate_uid()
    shared = large_dx(side=700, StudyInstanceUID=study, SeriesInstanceUID=series)
    batches = [
        [shared]
        + [large_dx(side=700, StudyInstanceUID=study, SeriesInstanceUID=series) for _ in range(4)]
        for _ in range(4)
    ]
    statuses: list[list[int]] = []
    errors: list[BaseException] = []

    def sender(batch: list[Dataset], calling: str) -> None:
        try:
            statuses.append(store_datasets(node.dicom_port, batch, calling=calling))
        except BaseException as exc:  # reported below, with the assertion that fails
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(batch, "TESTSCU")) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert statuses == [[StoreStatus.SUCCESS] * 5] * 4
    rows = stored_rows(node)
    assert len(rows) == 1 + 4 * 4
    assert {r.storage_path for r in rows} == {
        str(p.relative_to(node.store.root)) for p in files_under(node.store.instances_dir)
    }
    assert files_under(node.store.tmp_dir) == []
    assert files_under(node.store.conflicts_dir) == []

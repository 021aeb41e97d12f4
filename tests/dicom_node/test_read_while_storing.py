"""Readers never slow ingest: a C-STORE succeeds at once while a read transaction stays open.

The node runs with a short SQLite busy timeout, so a reader that took the write lock (as every
transaction once did, with ``BEGIN IMMEDIATE``) would make the C-STORE wait for it and then
fail with A700 within seconds instead of passing. Also: ingest keeps each image's Rows and
Columns, and start-up fills them in for instances recorded before it did.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select, update

from api.worklist import study_detail
from db.engine import reading, writing
from db.models import Instance, Study
from dicom_node.conformance import StoreStatus
from dicom_node.send import send_files
from dicom_node.sizes import fill_image_sizes
from tests.helpers.node import NodeFactory

BUSY_TIMEOUT_S = 5.0


def test_a_cstore_succeeds_while_a_reader_holds_its_transaction_open(
    database_url: str, start_node: NodeFactory, shared_dir: Path
) -> None:
    node = start_node(database={"url": database_url, "sqlite_busy_timeout_s": BUSY_TIMEOUT_S})
    files = shared_dir / "dicom/pydicom/src/pydicom/data/test_files"
    first, second = files / "CT_small.dcm", files / "MR_small.dcm"
    started = time.monotonic()
    (sent,) = send_files([first], "127.0.0.1", node.dicom_port, "FRACTUREGW", "PACS")
    normal_s = time.monotonic() - started
    assert sent.status == StoreStatus.SUCCESS

    reading_open = threading.Event()
    stop_reading = threading.Event()
    seen: list[int] = []

    def radiologist() -> None:
        # The study view, read in one transaction that stays open until told to end.
        with reading(node.sessions) as session:
            study = session.scalars(select(Study)).one()
            detail = study_detail(session, study)
            seen.append(len(detail.images))
            reading_open.set()
            stop_reading.wait(60)
            seen.append(len(session.scalars(select(Instance)).all()))

    reader = threading.Thread(target=radiologist)
    reader.start()
    try:
        assert reading_open.wait(30)
        started = time.monotonic()
        (stored,) = send_files([second], "127.0.0.1", node.dicom_port, "FRACTUREGW", "PACS")
        elapsed = time.monotonic() - started
        assert stored.status == StoreStatus.SUCCESS
        # As long as a C-STORE takes without a reader (association included), well within
        # the busy timeout a writer waiting for a lock would use up.
        assert elapsed < max(2 * normal_s, normal_s + 0.5) < BUSY_TIMEOUT_S
        assert reader.is_alive()
        assert not stop_reading.is_set()
        with reading(node.sessions) as session:
            assert len(session.scalars(select(Instance)).all()) == 2  # committed
    finally:
        stop_reading.set()
        reader.join(30)
    assert seen == [1, 1]  # the reader kept its snapshot throughout


def test_ingest_keeps_image_sizes_and_start_up_fills_in_older_rows(
    start_node: NodeFactory, shared_dir: Path
) -> None:
    node = start_node()
    files = shared_dir / "dicom/pydicom/src/pydicom/data/test_files"
    image, report = files / "CT_small.dcm", files / "test-SR.dcm"
    results = send_files([image, report], "127.0.0.1", node.dicom_port, "FRACTUREGW", "PACS")
    assert [r.status for r in results] == [StoreStatus.SUCCESS] * 2
    header = dcmread(image, stop_before_pixels=True)
    expected = {str(header.SOPInstanceUID): (int(header.Rows), int(header.Columns))}
    expected[str(dcmread(report, stop_before_pixels=True).SOPInstanceUID)] = (None, None)

    def sizes() -> dict[str, tuple[int | None, int | None]]:
        with reading(node.sessions) as session:
            return {
                i.sop_instance_uid: (i.rows, i.columns) for i in session.scalars(select(Instance))
            }

    assert sizes() == expected
    with writing(node.sessions) as session:  # as recorded before ingest kept them
        session.execute(update(Instance).values(rows=None, columns=None))
    assert fill_image_sizes(node.sessions, node.store) == 1
    assert sizes() == expected
    assert fill_image_sizes(node.sessions, node.store) == 0

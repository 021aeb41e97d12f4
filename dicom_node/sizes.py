"""Fill in the image size (Rows, Columns) of instances recorded before ingest kept it.

Ingest stores Rows and Columns with each instance, so the study view and review checks never
open files. Instances recorded earlier get theirs here, at start-up of the receiving process:
headers are read outside any transaction and written in short batches, so ingest is never kept
waiting. An instance whose file has no usable Rows/Columns keeps None (and is read again at the
next start-up: a header read is cheap).
"""

from __future__ import annotations

import logging

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import reading, writing
from db.models import Instance
from dicom_node.ingest import image_dimension
from dicom_node.storage import InstanceStore

log = logging.getLogger(__name__)

BATCH_SIZE = 500


def read_image_size(store: InstanceStore, storage_path: str) -> tuple[int, int] | None:
    """``(rows, columns)`` from a stored file's header, or None if it has none or is unreadable."""
    try:
        ds = dcmread(
            store.absolute(storage_path), stop_before_pixels=True, specific_tags=["Rows", "Columns"]
        )
    except (OSError, InvalidDicomError, ValueError, TypeError, EOFError):
        return None
    rows, columns = image_dimension(ds, "Rows"), image_dimension(ds, "Columns")
    return (rows, columns) if rows is not None and columns is not None else None


def fill_image_sizes(
    sessions: sessionmaker[Session], store: InstanceStore, *, batch_size: int = BATCH_SIZE
) -> int:
    """Record Rows and Columns of instances that lack them; returns how many were filled."""
    filled = unreadable = 0
    after = 0
    while True:
        with reading(sessions) as session:
            batch = session.execute(
                select(Instance.id, Instance.storage_path)
                .where(Instance.rows.is_(None), Instance.id > after)
                .order_by(Instance.id)
                .limit(batch_size)
            ).all()
        if not batch:
            break
        after = batch[-1][0]
        sizes = {row_id: read_image_size(store, path) for row_id, path in batch}
        found = {row_id: size for row_id, size in sizes.items() if size is not None}
        unreadable += len(sizes) - len(found)
        if found:
            with writing(sessions) as session:
                for row_id, (rows, columns) in found.items():
                    session.execute(
                        update(Instance)
                        .where(Instance.id == row_id, Instance.rows.is_(None))
                        .values(rows=rows, columns=columns)
                    )
            filled += len(found)
    if filled or unreadable:
        log.info("image sizes recorded for %d instances; %d have none", filled, unreadable)
    return filled

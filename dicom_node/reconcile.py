"""Start-up reconciliation of the storage folder with the database, after a crash.

Ingest writes ``tmp/<random>.part`` (fsynced), renames it to
``instances/<study>/<sop>.<digest>.dcm``, fsyncs the folder, then commits the row, and only
then answers Success. A crash can therefore leave two kinds of file without a row:

- temporary files (an interrupted write): removed;
- a complete instance in ``instances/`` whose row was never committed: recorded now, as ingest
  would have (so it is grouped, checked for identity conflicts and analysed). "Complete" is
  proved by the name: the SHA-256 of the file must start with the digest in its name, and the
  file must be laid out exactly as ingest writes it (preamble, our file meta, the data set,
  whose header names the same SOP instance). Anything else in ``instances/`` without a row is
  partial or foreign and is removed; none of it was ever acknowledged.

A complete copy whose SOP Instance UID already has a row pointing at another file is kept
aside under ``conflicts/`` rather than deleted. Only counts are logged, never paths or header
values (paths carry UIDs). Run it before the DICOM node accepts associations, in the one
process that receives into this storage folder.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import reading, writing
from db.models import Instance, StorageReconciliation
from dicom_node.ingest import (
    HeaderError,
    IngestOutcome,
    InstanceHeader,
    file_meta_for,
    parse_header,
    record_stored_file,
)
from dicom_node.storage import PREAMBLE, InstanceStore, StoredDigest

log = logging.getLogger(__name__)

#: ``<sop>.<first 16 hex digits of the SHA-256>.dcm``, as :meth:`InstanceStore.path_for` names.
_NAME_DIGEST = re.compile(r"\.([0-9a-f]{16})\.dcm$")
#: Calling AE title of a recovered row: the association that sent it is not known any more.
RECOVERED_AE_TITLE = ""


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What one reconciliation pass did, by kind of file."""

    recorded: int = 0
    kept_aside: int = 0
    removed_temporary: int = 0
    removed_partial: int = 0

    @property
    def total(self) -> int:
        return self.recorded + self.kept_aside + self.removed_temporary + self.removed_partial


@dataclass(frozen=True, slots=True)
class _Recoverable:
    header: InstanceHeader
    transfer_syntax_uid: str
    digest: StoredDigest


def reconcile_storage(sessions: sessionmaker[Session], store: InstanceStore) -> ReconcileReport:
    """Bring storage and database back in step; log and record the counts (see module)."""
    removed_temporary = 0
    for path in sorted(store.tmp_dir.iterdir()):
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
            removed_temporary += 1
    with reading(sessions) as session:
        known = set(session.scalars(select(Instance.storage_path)))
    recorded = kept_aside = removed_partial = 0
    for path in sorted(p for p in store.instances_dir.rglob("*") if p.is_file()):
        if str(path.relative_to(store.root)) in known:
            continue
        found = recoverable(store, path)
        if found is None:
            path.unlink(missing_ok=True)
            removed_partial += 1
            continue
        outcome = record_stored_file(
            sessions,
            store,
            found.header,
            path,
            found.digest,
            transfer_syntax_uid=found.transfer_syntax_uid,
            calling_ae_title=RECOVERED_AE_TITLE,
        )
        if outcome is IngestOutcome.STORED:
            recorded += 1
        elif outcome is IngestOutcome.CONFLICT_KEPT:
            kept_aside += 1
    report = ReconcileReport(recorded, kept_aside, removed_temporary, removed_partial)
    with writing(sessions) as session:
        session.add(
            StorageReconciliation(
                recorded=report.recorded,
                kept_aside=report.kept_aside,
                removed_temporary=report.removed_temporary,
                removed_partial=report.removed_partial,
            )
        )
    level = logging.WARNING if report.total else logging.INFO
    log.log(
        level,
        "storage reconciled: %d instances recorded, %d kept aside, "
        "%d temporary and %d partial files removed",
        report.recorded,
        report.kept_aside,
        report.removed_temporary,
        report.removed_partial,
    )
    return report


def recoverable(store: InstanceStore, path: Path) -> _Recoverable | None:
    """The header of ``path`` if it is a complete instance exactly as ingest writes it."""
    named = _NAME_DIGEST.search(path.name)
    if named is None:
        return None
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    sha256 = hashlib.sha256(raw).hexdigest()
    if not sha256.startswith(named.group(1)):
        return None  # truncated or damaged after the rename
    try:
        meta = read_file_meta_info(path)
        sop_class = str(meta.MediaStorageSOPClassUID)
        sop_instance = str(meta.MediaStorageSOPInstanceUID)
        syntax = str(meta.TransferSyntaxUID)
        expected = DicomBytesIO()
        write_file_meta_info(
            expected, file_meta_for(sop_class, sop_instance, syntax), enforce_standard=True
        )
        head = PREAMBLE + expected.getvalue()
        if not raw.startswith(head):
            return None  # not laid out as ingest writes: not ours
        header = parse_header(memoryview(raw)[len(head) :], syntax)
    except (InvalidDicomError, HeaderError, AttributeError, ValueError, OSError, EOFError):
        return None
    if (header.sop_class_uid, header.sop_instance_uid) != (sop_class, sop_instance):
        return None
    if store.path_for(header.study_instance_uid, header.sop_instance_uid, sha256) != path:
        return None
    return _Recoverable(header, syntax, StoredDigest(sha256, len(raw)))


__all__ = ["RECOVERED_AE_TITLE", "ReconcileReport", "reconcile_storage", "recoverable"]

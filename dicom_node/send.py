"""C-ECHO and C-STORE as an SCU: the ``echo`` and ``send`` commands and the benchmarks.

Files are sent as they are on disk (no decode, no re-encode): the association proposes each
file's own SOP class and transfer syntax, so nothing is converted on the way.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config

from dicom_node.conformance import VERIFICATION_SOP_CLASS
from dicom_node.peer import request_association

log = logging.getLogger(__name__)

#: pynetdicom's (and PS3.8's) limit on presentation contexts proposed in one association.
MAX_CONTEXTS = 128


class AssociationFailedError(ConnectionError):
    """The peer could not be reached, rejected the association or aborted it."""


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one file: the status the peer returned, or why it was not sent."""

    path: Path
    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0 or self.status >> 12 == 0xB)


def echo(host: str, port: int, called_ae: str, calling_ae: str, *, timeout: float = 30.0) -> int:
    """Send C-ECHO; return the status (0 = success). Raises AssociationFailedError."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    request = request_association(ae, host, port, called_ae)
    if not request.established:
        raise AssociationFailedError(request.failure())
    assoc = request.assoc
    try:
        status = assoc.send_c_echo()
        if not status:
            raise AssociationFailedError("no response to C-ECHO (timeout or abort)")
        return int(status.Status)
    finally:
        assoc.release()


def iter_dicom_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and every file below folders named, in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


@dataclass(frozen=True, slots=True)
class _Meta:
    sop_class: str
    transfer_syntax: str


def _read_meta(path: Path) -> _Meta:
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID", ""))
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if not sop_class or not syntax:
        raise InvalidDicomError("no SOP class or transfer syntax in the file meta")
    return _Meta(sop_class, syntax)


def send_files(
    files: list[Path],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    *,
    timeout: float = 60.0,
    max_pdu: int = 16382,
    progress: Callable[[SendResult], None] | None = None,
) -> list[SendResult]:
    """C-STORE each file; one association per batch of up to 128 distinct contexts.

    Files that are not DICOM are reported and skipped; a file the peer refuses is reported with
    the peer's status; an association failure reports every remaining file of its batch.
    """
    results: list[SendResult] = []

    def report(result: SendResult) -> None:
        results.append(result)
        if progress is not None:
            progress(result)

    metas: list[tuple[Path, _Meta]] = []
    for path in files:
        try:
            metas.append((path, _read_meta(path)))
        # struct.error: pydicom, for a file that ends inside an element's length
        except (InvalidDicomError, OSError, ValueError, struct.error) as exc:
            report(SendResult(path, None, f"not a DICOM file: {type(exc).__name__}"))

    batch: list[tuple[Path, _Meta]] = []
    contexts: set[tuple[str, str]] = set()
    for item in metas:
        key = (item[1].sop_class, item[1].transfer_syntax)
        if key not in contexts and len(contexts) == MAX_CONTEXTS:
            _send_batch(
                batch, contexts, host, port, called_ae, calling_ae, timeout, max_pdu, report
            )
            batch, contexts = [], set()
        contexts.add(key)
        batch.append(item)
    if batch:
        _send_batch(batch, contexts, host, port, called_ae, calling_ae, timeout, max_pdu, report)
    return results


def _send_batch(
    batch: list[tuple[Path, _Meta]],
    contexts: set[tuple[str, str]],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout: float,
    max_pdu: int,
    report: Callable[[SendResult], None],
) -> None:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.maximum_pdu_size = max_pdu
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, [syntax])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # stream the file's bytes, never re-encode
    try:
        request = request_association(ae, host, port, called_ae)
        if not request.established:
            reason = request.failure()
            for path, _ in batch:
                report(SendResult(path, None, reason))
            return
        assoc = request.assoc
        try:
            for index, (path, _) in enumerate(batch):
                if not assoc.is_established:
                    for rest, _ in batch[index:]:
                        report(SendResult(rest, None, "association aborted"))
                    return
                try:
                    status = assoc.send_c_store(path)
                except (ValueError, AttributeError, OSError) as exc:
                    report(SendResult(path, None, f"cannot send: {exc}"))
                    continue
                if not status:
                    report(SendResult(path, None, "no response (timeout or abort)"))
                else:
                    report(SendResult(path, int(status.Status)))
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous

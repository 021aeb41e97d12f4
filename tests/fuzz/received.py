"""The service's path for one received instance, as a function of bytes: what the fuzzer runs.

An input is a DICOM Part 10 file. Its file meta says only which transfer syntax the instance
arrives in (the presentation context of a C-STORE); the bytes after the file meta are the
data set as the C-STORE carries it. From there on every step is the service's own code:

1. :func:`dicom_node.ingest.parse_header`, as the C-STORE handler does before it stores
   anything (refused: :class:`~dicom_node.ingest.HeaderError`, status C000 or C001);
2. the file the node stores: :func:`dicom_node.ingest.file_meta_for` and
   :meth:`dicom_node.storage.InstanceStore.write_temporary`;
3. :func:`pipeline.study.classify_instance`: SOP class, ``dcmread`` and
   :func:`inference.decode.check_analysable` (refused: out of scope, with a reason);
4. :func:`pipeline.study.prepare_instance`: ``dcmread``, the model card's scope, then
   :func:`inference.pixels.to_model_input` (decode, grey chain, ``prepare``) at the bundled
   model's input size (refused: :class:`~inference.errors.NotAnalysable`).

Those refusals are the documented answers to bad input. Any other exception escapes, and the
fuzzer reports it as a crash: in the service it would be a C-STORE answered "processing
failure", or a job that fails for every image of the study.

Besides the fuzzer's own limits (``-timeout``, ``-rss_limit_mb``), the fuzzing process holds
each input to :data:`RSS_LIMIT_MB` of *peak* resident memory: libFuzzer samples the resident
size once a second, which misses a spike that comes and goes in between; the kernel's peak
(``ru_maxrss``) does not, and the first input that raises it over the limit is the one reported.
"""

from __future__ import annotations

import resource
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from config.settings import BUNDLED_MODEL_DIR
from db.models import Eligibility, Instance
from dicom_node.conformance import ACCEPTED_TRANSFER_SYNTAXES
from dicom_node.ingest import HeaderError, file_meta_for, parse_header
from dicom_node.storage import InstanceStore
from inference.errors import NotAnalysable
from inference.model_package import ModelCard, read_card
from pipeline.study import classify_instance, prepare_instance

#: Peak resident memory allowed to the fuzzing process, in MiB (also its ``-rss_limit_mb``).
RSS_LIMIT_MB = 2048

_PREAMBLE_LENGTH = 128
#: Explicit VR Little Endian VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN"})
_LONG_VRS |= frozenset({b"UR", b"UT", b"UV"})
_TRANSFER_SYNTAX_ELEMENT = 0x0010


class Outcome(StrEnum):
    """How far an input went along the service's path."""

    #: Not a Part 10 file, or a transfer syntax the node does not negotiate: never received.
    NOT_RECEIVED = "not received"
    #: The C-STORE handler refused it (header unreadable, identifiers missing or invalid).
    REFUSED = "refused by the C-STORE handler"
    #: Stored, then classified out of scope (SOP class, header or Pixel Data refused).
    OUT_OF_SCOPE = "out of scope"
    #: Eligible, then refused by the analysis (scope, decoding, grey chain).
    NOT_ANALYSABLE = "not analysable"
    #: Turned into a model input.
    PREPARED = "prepared"


class AllocationLimitExceededError(MemoryError):
    """The process's peak resident memory passed :data:`RSS_LIMIT_MB` during one input."""


def split_part10(data: bytes) -> tuple[str, memoryview] | None:
    """The Transfer Syntax UID of a Part 10 file and the data set after its file meta.

    PS3.10 7.1: a 128-byte preamble, ``DICM``, then group 0002 in Explicit VR Little Endian.
    ``None`` when the bytes are not laid out so, or name no transfer syntax.
    """
    if data[_PREAMBLE_LENGTH : _PREAMBLE_LENGTH + 4] != b"DICM":
        return None
    view = memoryview(data)
    position = _PREAMBLE_LENGTH + 4
    transfer_syntax: str | None = None
    while position + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, position)
        if group != 0x0002:
            break
        vr = bytes(view[position + 4 : position + 6])
        if vr in _LONG_VRS:
            if position + 12 > len(data):
                return None
            (length,) = struct.unpack_from("<I", data, position + 8)
            start = position + 12
        else:
            (length,) = struct.unpack_from("<H", data, position + 6)
            start = position + 8
        if element == _TRANSFER_SYNTAX_ELEMENT:
            value = bytes(view[start : start + length]).rstrip(b"\x00 ")
            transfer_syntax = value.decode("ascii", errors="replace")
        position = start + length
    if transfer_syntax is None or position > len(data):
        return None
    return transfer_syntax, view[position:]


class ReceivedInstancePath:
    """Runs inputs through the service's path; files are stored under a private folder."""

    def __init__(self, folder: Path, card: ModelCard, *, peak_rss_limit_mb: int | None) -> None:
        self.store = InstanceStore(folder, fsync=False)
        self.card = card
        self.peak_rss_limit_mb = peak_rss_limit_mb

    def __call__(self, data: bytes) -> Outcome:
        """One input, along the path of the module docstring; anything unexpected escapes."""
        try:
            return self._run(data)
        finally:
            self._check_peak_memory()

    def _check_peak_memory(self) -> None:
        if self.peak_rss_limit_mb is None:
            return
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        if peak_mb > self.peak_rss_limit_mb:
            raise AllocationLimitExceededError(
                f"peak resident memory {peak_mb:.0f} MiB, over the limit of "
                f"{self.peak_rss_limit_mb} MiB"
            )

    def _run(self, data: bytes) -> Outcome:
        received = split_part10(data)
        if received is None or received[0] not in ACCEPTED_TRANSFER_SYNTAXES:
            return Outcome.NOT_RECEIVED
        transfer_syntax, encoded = received
        try:
            header = parse_header(encoded, transfer_syntax)
        except HeaderError:
            return Outcome.REFUSED
        meta = file_meta_for(header.sop_class_uid, header.sop_instance_uid, transfer_syntax)
        stored, _ = self.store.write_temporary(meta, encoded)
        try:
            instance = Instance(
                sop_class_uid=header.sop_class_uid,
                storage_path=str(stored.relative_to(self.store.root)),
            )
            eligibility, _ = classify_instance(self.store, instance)
            if eligibility is not Eligibility.ELIGIBLE:
                return Outcome.OUT_OF_SCOPE
            try:
                prepare_instance(stored, self.card)
            except NotAnalysable:
                return Outcome.NOT_ANALYSABLE
            return Outcome.PREPARED
        finally:
            stored.unlink(missing_ok=True)


@contextmanager
def received_instance_path(
    *, peak_rss_limit_mb: int | None = None
) -> Iterator[ReceivedInstancePath]:
    """A :class:`ReceivedInstancePath` with the bundled model's card, in a temporary folder.

    The folder is made under ``$TMPDIR``. ``peak_rss_limit_mb`` is for a process of its own
    (the fuzzer's), not for a test process whose peak other tests have raised.
    """
    folder = Path(tempfile.mkdtemp(prefix="fuzz-received-"))
    try:
        card = read_card(BUNDLED_MODEL_DIR)
        yield ReceivedInstancePath(folder, card, peak_rss_limit_mb=peak_rss_limit_mb)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

"""A C-STORE data set written to the storage's temporary file while its fragments arrive.

The receiving thread only collects the P-DATA fragments (no copy: they are views of the PDUs as
received). Every 1 MiB of them is written (one ``writev``), hashed (SHA-256) and handed to the
kernel's write-back on a writer thread, one chunk in flight per data set, so the disk works
while the network still delivers and the receiving thread never waits for the disk unless the
disk is the slower of the two. When the last
fragment arrives only the last buffer and the fsync are left.

The file has the layout :meth:`InstanceStore.write_temporary` gives it (preamble, our file
meta, the data set as received), so the digest and the stored bytes do not depend on which path
received the data set. The first bytes of the data set are kept in memory for the header.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from dicom_node.storage import PREAMBLE, InstanceStore, StorageError, StoredDigest

log = logging.getLogger(__name__)

#: Bytes handed to the writer thread at a time.
CHUNK_BYTES = 1 << 20
#: Fragments handed over at most at a time (below IOV_MAX, 1024 on Linux, for tiny PDUs).
_CHUNK_FRAGMENTS = 512
#: How much of the data set's beginning is kept for the header (it ends before the pixels).
HEADER_PREFIX_BYTES = 256 * 1024


class WriteBack(StrEnum):
    """How a written chunk is pushed towards the disk before the final fsync.

    Measured by ``bench/bench_write_back.py``; see docs/PERFORMANCE.md.
    """

    #: Leave it to the kernel's dirty-page timers: the fsync after the last fragment writes it all.
    NONE = "none"
    #: ``sync_file_range(SYNC_FILE_RANGE_WRITE)``: start writing the chunk out, do not wait.
    START = "start"
    #: ``fdatasync`` after every chunk, on the writer thread.
    FDATASYNC = "fdatasync"


#: ``SYNC_FILE_RANGE_WRITE`` from <linux/fs.h>.
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux; Python's ``os`` module does not offer it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def start_write_back(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` to the disk; no waiting.

    A no-op where ``sync_file_range`` does not exist; the final fsync then writes everything.
    """
    function = _sync_file_range()
    if function is not None and function(fd, offset, length, _SYNC_FILE_RANGE_WRITE) != 0:
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ESPIPE):
            raise OSError(code, os.strerror(code))


#: Writes, hashes and pushes out received chunks; one chunk of a data set in flight at a time.
_WRITERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="receive-writer")


@dataclass(frozen=True, slots=True)
class ReceivedDataSet:
    """A completely received data set: its temporary file and what the header is parsed from."""

    path: Path
    #: Where the data set starts in the file (after preamble and file meta).
    data_offset: int
    #: The data set's first bytes (all of it when shorter than :data:`HEADER_PREFIX_BYTES`).
    prefix: bytes
    data_set_length: int
    incoming: IncomingDataSet

    def durable(self) -> StoredDigest:
        """Wait until the file is written and fsynced; its digest. Raises :class:`StorageError`."""
        return self.incoming.durable()

    def read_data_set(self) -> bytes:
        """The whole data set from the file (for the rare header that the prefix does not hold)."""
        self.durable()
        with open(self.path, "rb") as handle:
            handle.seek(self.data_offset)
            return handle.read()

    def discard(self) -> None:
        """Remove the temporary file (whatever became of it, it is not needed any more)."""
        self.incoming.discard()


class IncomingDataSet:
    """The temporary file of one C-STORE data set, written while it is being received.

    ``write`` and ``finish`` are called by the receiving thread, in order; ``durable`` and
    ``discard`` by whoever handles the request. A write error (a full disk) is kept, the
    partial file removed at once, later fragments dropped, and :meth:`durable` raises it.
    """

    def __init__(
        self,
        store: InstanceStore,
        file_meta: FileMetaDataset,
        *,
        write_back: WriteBack = WriteBack.START,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        meta = DicomBytesIO()
        write_file_meta_info(meta, file_meta, enforce_standard=True)
        head = PREAMBLE + meta.getvalue()
        self.data_offset = len(head)
        self._store = store
        self._write_back = write_back
        self._chunk_bytes = chunk_bytes
        self.path, self._fd = store.create_temporary()
        self._fragments: list[bytes | memoryview] = [head]
        self._buffered = len(head)
        self._prefix = bytearray()
        self._length = 0  # of the data set received so far
        self._offset = 0  # in the file, of the next chunk handed to the writer
        self._sha = hashlib.sha256()
        self._pending: Future[None] | None = None
        self._error: OSError | None = None
        self._finished = False
        self._discarded = False
        self._lock = threading.Lock()

    def write(self, fragment: bytes | memoryview) -> None:
        """Append a fragment of the data set; it is kept, not copied, so must not change."""
        if self._error is not None or self._discarded:
            return
        missing = HEADER_PREFIX_BYTES - len(self._prefix)
        if missing > 0:
            self._prefix += fragment[:missing]
        self._fragments.append(fragment)
        self._buffered += len(fragment)
        self._length += len(fragment)
        if self._buffered >= self._chunk_bytes or len(self._fragments) >= _CHUNK_FRAGMENTS:
            with self._lock:
                if not self._discarded:
                    self._hand_off(last=False)

    def finish(self) -> ReceivedDataSet:
        """The last fragment arrived: write the rest and fsync (on the writer thread)."""
        with self._lock:
            if not self._finished and not self._discarded:
                self._finished = True
                self._hand_off(last=True)
        return ReceivedDataSet(
            self.path, self.data_offset, bytes(self._prefix), self._length, incoming=self
        )

    def durable(self) -> StoredDigest:
        """Wait for the writer; the digest of what was written. Raises :class:`StorageError`."""
        if not self._finished:
            raise RuntimeError("the data set is not completely received")
        self._wait()
        if self._error is not None:
            error = self._error
            raise StorageError(error.errno, f"cannot write to storage: {error.strerror}")
        if self._discarded:
            raise StorageError(errno.ENOENT, "the received data set was discarded")
        return StoredDigest(self._sha.hexdigest(), self.data_offset + self._length)

    def discard(self) -> None:
        """Stop writing and remove the temporary file (an abort, a refusal, or after the rename)."""
        with self._lock:
            if self._discarded:
                return
            self._discarded = True
        self._wait()
        self._close()
        self.path.unlink(missing_ok=True)

    def _hand_off(self, *, last: bool) -> None:
        """Give the buffer to the writer thread (under the lock, so never after a discard)."""
        chunk, size = self._fragments, self._buffered
        self._fragments, self._buffered = [], 0
        self._wait()  # one chunk in flight: the disk's pace holds the receiver back
        if self._error is not None:
            return
        offset, self._offset = self._offset, self._offset + size
        self._pending = _WRITERS.submit(self._write_chunk, chunk, offset, size, last)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write_chunk(
        self, chunk: list[bytes | memoryview], offset: int, size: int, last: bool
    ) -> None:
        """On the writer thread: write, hash, push out; fsync and close after the last chunk."""
        try:
            _write_all(self._fd, chunk, size)
            for fragment in chunk:
                self._sha.update(fragment)
            if last:
                if self._store.fsync:
                    os.fsync(self._fd)
                self._close()
            elif self._write_back is WriteBack.START:
                start_write_back(self._fd, offset, size)
            elif self._write_back is WriteBack.FDATASYNC:
                os.fdatasync(self._fd)
        except OSError as exc:
            self._error = exc
            self._close()
            self.path.unlink(missing_ok=True)  # give the space back now, not at the end

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _write_all(fd: int, fragments: list[bytes | memoryview], size: int) -> None:
    """Write the fragments in order with one ``writev`` (more only after a short write)."""
    written = os.writev(fd, fragments) if fragments else 0
    if written < size:
        rest = memoryview(b"".join(fragments))
        while written < size:
            written += os.write(fd, rest[written:])


__all__ = [
    "CHUNK_BYTES",
    "HEADER_PREFIX_BYTES",
    "IncomingDataSet",
    "ReceivedDataSet",
    "WriteBack",
    "start_write_back",
]

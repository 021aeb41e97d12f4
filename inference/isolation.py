"""Compressed Pixel Data decoded in recycled child processes, so a native codec cannot harm us.

The codecs are C and C++ libraries fed with bytes from the network. pylibjpeg-libjpeg keeps
about one decoded image of memory at each failed decode of some malformed JPEG Lossless
streams (docs/SECURITY.md), and any codec may abort or crash on hostile data. Decoded in a
child process, the leak goes back to the operating system when the child is replaced, and a
crash ends the child only: the decode is refused as ``undecodable`` and the pool goes on.

:class:`DecodePool` runs decodes on a :class:`concurrent.futures.ProcessPoolExecutor` whose
children come from a ``forkserver`` (the parent runs threads and TensorFlow, which ``fork`` does
not survive) with the decoding modules preloaded, so a replacement child starts in milliseconds.
Children are recycled by replacing the whole executor (a *generation*) once a child reports
``decodes_per_child`` decodes or a resident size over ``max_child_rss_mib``: the executor's own
``max_tasks_per_child`` deadlocks on Python 3.11 to 3.13 once a backlog is queued (CPython
gh-115634), and it knows nothing of memory. The retired executor finishes what it has started
and its children exit.

One pool serves the whole process (the job workers, the publish step and the API's viewer all
decode through :func:`inference.decode.decode_image`): the service's start-up takes it with
:func:`acquire` and its stop gives it back; nothing starts at import, and the children start on
the first compressed decode. Without a pool, decoding stays in the calling process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydicom.dataset import Dataset

from inference.errors import NotAnalysable, Reason

if TYPE_CHECKING:
    from inference.decode import DecodedImage

log = logging.getLogger(__name__)

#: What a child runs: the dataset's pixel module and the ``min_long_side`` of the caller.
DecodeTask = Callable[[Dataset, int | None], "DecodedImage"]

#: Imported once by the fork server, so that every child starts with the codecs loaded.
_PRELOAD = ["inference.decode"]
_MIB = 1024 * 1024
#: Decoded frames of at least this many bytes come back through shared memory, not the pipe.
_SHARED_FROM = 256 * 1024
#: How many decodes this child has run; a module global, because it counts in the child.
_decodes_here = 0


class IsolationConfig(Protocol):
    """The settings of the pool (``[inference.decode_isolation]``, :mod:`config.settings`)."""

    @property
    def enabled(self) -> bool: ...

    @property
    def processes(self) -> int: ...

    @property
    def decodes_per_child(self) -> int: ...

    @property
    def max_child_rss_mib(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SharedImage:
    """A decoded frame a child left in shared memory: only its name and layout cross the pipe.

    A ``ProcessPoolExecutor`` moves a result through a pipe 64 KiB at a time, about 30 ms for
    10 MiB on two cores; one copy into shared memory and one out of it take a few
    (docs/PERFORMANCE.md).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    photometric: str
    reduction: int

    @classmethod
    def from_image(cls, image: DecodedImage) -> SharedImage:
        """Copy the frame into a new shared memory block (the receiver unlinks it)."""
        pixels = image.pixels
        block = SharedMemory(create=True, size=max(1, pixels.nbytes))
        try:
            np.ndarray(pixels.shape, pixels.dtype, buffer=block.buf)[...] = pixels
        finally:
            block.close()
        return cls(block.name, pixels.shape, pixels.dtype.str, image.photometric, image.reduction)

    def take(self) -> DecodedImage:
        """The frame, copied out of its block, which is then unlinked."""
        from inference.decode import DecodedImage

        block = SharedMemory(name=self.name)
        try:
            pixels = np.ndarray(self.shape, np.dtype(self.dtype), buffer=block.buf).copy()
        finally:
            block.close()
            block.unlink()
        return DecodedImage(pixels, self.photometric, self.reduction)


@dataclass(frozen=True, slots=True)
class ChildReport:
    """A child's answer: the decoded frame or the task's refusal, and what the parent needs to
    decide on recycling (a refused decode is the one that leaks)."""

    outcome: DecodedImage | SharedImage | NotAnalysable
    pid: int
    decodes: int
    rss_bytes: int


def resident_bytes() -> int:
    """This process's resident set size now (``/proc/self/statm``; Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def run_in_child(task: DecodeTask, ds: Dataset, min_long_side: int | None) -> ChildReport:
    """Run ``task`` in this (child) process and report on the child with its result."""
    global _decodes_here
    _decodes_here += 1
    outcome: DecodedImage | SharedImage | NotAnalysable
    try:
        image = task(ds, min_long_side)
    except NotAnalysable as exc:
        outcome = exc
    else:
        outcome = SharedImage.from_image(image) if image.pixels.nbytes >= _SHARED_FROM else image
    return ChildReport(outcome, os.getpid(), _decodes_here, resident_bytes())


class DecodePool:
    """Child processes that decode, replaced after ``decodes_per_child`` decodes, when one grows
    past ``max_child_rss_mib`` and when one dies.

    Thread-safe: the job workers and the API's threads call :meth:`decode` concurrently.
    """

    def __init__(
        self,
        task: DecodeTask,
        *,
        processes: int,
        decodes_per_child: int,
        max_child_rss_mib: int,
    ) -> None:
        if processes < 1 or decodes_per_child < 1 or max_child_rss_mib < 1:
            raise ValueError(
                f"pool of {processes} processes, {decodes_per_child} decodes per child and "
                f"{max_child_rss_mib} MiB per child: each must be at least 1"
            )
        self._task = task
        self._processes = processes
        self._decodes_per_child = decodes_per_child
        self._max_rss_bytes = max_child_rss_mib * _MIB
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_PRELOAD)
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        #: Generations replaced so far (for tests and logs).
        self.recycled = 0

    def decode(self, ds: Dataset, min_long_side: int | None) -> DecodedImage:
        """Decode ``ds`` (its pixel module, see :func:`pixel_module`) in a child.

        A child that dies breaks its generation: every decode it had in flight is run once more,
        each alone in a fresh child, so that only the input that kills a child is refused.

        Raises
        ------
        NotAnalysable
            ``undecodable`` when the child decoding ``ds`` dies; any refusal of the task itself.
        """
        executor = self._current()
        try:
            future = executor.submit(run_in_child, self._task, ds, min_long_side)
            report = future.result()
        except BrokenProcessPool:
            self._retire(executor, "a decoding process died")
            report = self._decode_alone(ds, min_long_side)
        if report.decodes >= self._decodes_per_child:
            self._retire(executor, f"a child ran {report.decodes} decodes")
        elif report.rss_bytes > self._max_rss_bytes:
            self._retire(executor, f"a child grew to {report.rss_bytes // _MIB} MiB")
        if isinstance(report.outcome, NotAnalysable):
            raise report.outcome
        if isinstance(report.outcome, SharedImage):
            return report.outcome.take()
        return report.outcome

    def close(self) -> None:
        """Stop the children (waiting for decodes in flight); later decodes are refused."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the decode pool is closed")
            if self._executor is None:
                self._executor = ProcessPoolExecutor(self._processes, mp_context=self._context)
            return self._executor

    def _retire(self, executor: ProcessPoolExecutor, why: str) -> None:
        """Replace ``executor`` (if no other thread did already); its children exit when done."""
        with self._lock:
            if self._executor is not executor:
                return
            self._executor = None
            self.recycled += 1
        log.info("decode processes replaced: %s", why)
        executor.shutdown(wait=False)

    def _decode_alone(self, ds: Dataset, min_long_side: int | None) -> ChildReport:
        """Decode once more in a child of its own: if that one dies too, the input killed it,
        provided a child can run at all (else no input could be decoded: not the input's fault).

        Raises
        ------
        NotAnalysable
            ``undecodable`` when the child dies on this input.
        RuntimeError
            When no child can even run a no-op (the job fails and is retried later).
        """
        with ProcessPoolExecutor(1, mp_context=self._context) as alone:
            future: Future[ChildReport] = alone.submit(run_in_child, self._task, ds, min_long_side)
            try:
                return future.result()
            except BrokenProcessPool:
                pass
        with ProcessPoolExecutor(1, mp_context=self._context) as probe:
            try:
                probe.submit(os.getpid).result()
            except BrokenProcessPool as exc:
                raise RuntimeError("no decoding process can start") from exc
        raise NotAnalysable(Reason.UNDECODABLE, "the decoding process died on this Pixel Data")


_shared_lock = threading.Lock()
_shared: DecodePool | None = None
_holders = 0


def acquire(config: IsolationConfig, task: DecodeTask | None = None) -> bool:
    """Route this process's compressed decodes to the shared pool, creating it on first use.

    Returns whether a hold was taken (not when ``config.enabled`` is false); each hold is given
    back with :func:`release`. The first holder's limits apply to the pool's life. ``task`` is
    what the children run, :func:`inference.decode.decode_frame` unless a test says
    otherwise.
    """
    global _shared, _holders
    if not config.enabled:
        return False
    if task is None:
        from inference.decode import decode_frame

        task = decode_frame
    with _shared_lock:
        if _shared is None:
            _shared = DecodePool(
                task,
                processes=config.processes,
                decodes_per_child=config.decodes_per_child,
                max_child_rss_mib=config.max_child_rss_mib,
            )
        _holders += 1
    return True


def release() -> None:
    """Give back one hold; the last one stops the pool's children."""
    global _shared, _holders
    with _shared_lock:
        if _holders == 0:
            raise RuntimeError("release() without a matching acquire()")
        _holders -= 1
        pool = _shared if _holders == 0 else None
        if pool is not None:
            _shared = None
    if pool is not None:
        pool.close()


def shared_pool() -> DecodePool | None:
    """The pool the process decodes with, ``None`` while no part holds one."""
    return _shared


def pixel_module(ds: Dataset) -> Dataset:
    """The elements a decoder reads (PS3.3 C.7.6.3 and the Transfer Syntax UID), nothing else.

    What goes to a child: no patient data crosses the process boundary, and the copy is the
    compressed Pixel Data plus a few numbers.
    """
    part = Dataset()
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            part[keyword] = ds[keyword]
    meta = Dataset()
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    part.file_meta = meta  # type: ignore[assignment]
    return part


_PIXEL_KEYWORDS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
)

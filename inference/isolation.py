"""Compressed Pixel Data decoded in recycled child processes, so a native codec cannot harm us.

The codecs are C and C++ libraries fed with bytes from the network. pylibjpeg-libjpeg keeps
about one decoded image of memory at each failed decode of some malformed JPEG Lossless
streams (docs/SECURITY.md), any codec may abort or crash on hostile data, and one may loop
for ever. Decoded in a child process, the leak goes back to the operating system when the
child is replaced, a crash ends the child only (the image is refused as ``undecodable``), and
a decode that runs past ``decode_timeout_s`` has its child killed (the image is refused as
``decode_timeout``); the pool goes on with a fresh child either way.

:class:`DecodePool` keeps up to ``processes`` children, each decoding one image at a time
through a pipe of its own, so that the parent always knows which child runs which decode: a
timeout kills that child only, and the decodes other children run finish undisturbed. (A
``concurrent.futures.ProcessPoolExecutor`` cannot do that: it hides which child runs a task,
and a child that dies breaks the whole executor.) The children come from a ``forkserver``
(the parent runs threads and TensorFlow, which ``fork`` does not survive) with the decoding
modules preloaded, so a replacement child starts in milliseconds. A child is replaced once it
reports ``decodes_per_child`` decodes or a resident size over ``max_child_rss_mib``.

One pool serves the whole process (the job workers, the publish step and the API's viewer all
decode through :func:`inference.decode.decode_image`): the service's start-up takes it with
:func:`acquire` and its stop gives it back; nothing starts at import, and the children start on
the first compressed decode. Without a pool, decoding stays in the calling process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
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
#: How long a new child may take to start and load its task before the pool gives up on it:
#: not part of any decode's time, and far more than the milliseconds a start takes.
_START_TIMEOUT_S = 60.0
#: How long a child that was told to stop, or killed, may take to exit when the pool closes.
_EXIT_TIMEOUT_S = 10.0
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

    @property
    def decode_timeout_s(self) -> float: ...


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


def serve(conn: Connection, task: DecodeTask) -> None:
    """A child's life: say it is ready, then answer each decode request until told to stop.

    A request is ``(ds, min_long_side)``; ``None``, or the parent's end closing, stops the
    child. The answer is a :class:`ChildReport`, or the exception of a task that failed other
    than by refusing (a bug: the parent raises it, as it would have in-process).
    """
    conn.send(os.getpid())
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        ds, min_long_side = request
        answer: ChildReport | Exception
        try:
            answer = run_in_child(task, ds, min_long_side)
        except Exception as exc:  # not swallowed: sent to the parent, which raises it
            answer = exc
        try:
            conn.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError):
            conn.send(RuntimeError(f"{type(answer).__name__} in the decoding process"))


@dataclass(eq=False, slots=True)
class _Child:
    """A decoding child and the parent's end of its pipe."""

    process: BaseProcess
    conn: Connection

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None  # a started process has one
        return pid


class DecodePool:
    """Child processes that decode, one image at a time each; a child is replaced after
    ``decodes_per_child`` decodes, when it grows past ``max_child_rss_mib``, when it dies and
    when a decode runs past ``decode_timeout_s`` (then it is killed).

    Thread-safe: the job workers and the API's threads call :meth:`decode` concurrently; a
    caller waits for a free child when all ``processes`` are busy.
    """

    def __init__(
        self,
        task: DecodeTask,
        *,
        processes: int,
        decodes_per_child: int,
        max_child_rss_mib: int,
        decode_timeout_s: float,
    ) -> None:
        if processes < 1 or decodes_per_child < 1 or max_child_rss_mib < 1:
            raise ValueError(
                f"pool of {processes} processes, {decodes_per_child} decodes per child and "
                f"{max_child_rss_mib} MiB per child: each must be at least 1"
            )
        if not decode_timeout_s > 0:
            raise ValueError(f"decode timeout of {decode_timeout_s} s: it must be positive")
        self._task = task
        self._processes = processes
        self._decodes_per_child = decodes_per_child
        self._max_rss_bytes = max_child_rss_mib * _MIB
        self._timeout_s = decode_timeout_s
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_PRELOAD)
        #: Guards everything below; notified whenever a child is given back or the pool closes.
        self._changed = threading.Condition()
        self._idle: list[_Child] = []
        self._live: set[_Child] = set()
        self._busy = 0
        self._closed = False
        #: Children told to stop, reaped as they exit.
        self._stopping: list[BaseProcess] = []
        #: Children replaced so far, for any reason (for tests and logs).
        self.recycled = 0
        #: Children killed because a decode ran past the timeout.
        self.timed_out = 0

    def decode(self, ds: Dataset, min_long_side: int | None) -> DecodedImage:
        """Decode ``ds`` (its pixel module, see :func:`pixel_module`) in a child.

        Raises
        ------
        NotAnalysable
            ``decode_timeout`` when the decode runs past ``decode_timeout_s`` (its child is
            killed); ``undecodable`` when the child decoding ``ds`` dies; any refusal of the
            task itself.
        RuntimeError
            When no child can start (the job fails and is retried later), or the pool is closed.
        """
        answer = self._exchange(self._take(), (ds, min_long_side))
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer.outcome, NotAnalysable):
            raise answer.outcome
        if isinstance(answer.outcome, SharedImage):
            return answer.outcome.take()
        return answer.outcome

    def pids(self) -> frozenset[int]:
        """The process ids of the children alive now (for tests and logs)."""
        with self._changed:
            return frozenset(child.pid for child in self._live)

    def close(self) -> None:
        """Stop the children, after the decodes in flight; later decodes are refused."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            while self._busy:
                self._changed.wait()
            idle, self._idle = self._idle, []
        for child in idle:
            self._stop(child, kill=False)
        with self._changed:
            stopping, self._stopping = self._stopping, []
        for process in stopping:
            process.join(_EXIT_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join(_EXIT_TIMEOUT_S)

    def _take(self) -> _Child:
        """An idle child, or a new one when fewer than ``processes`` run; waits for one else."""
        with self._changed:
            while True:
                if self._closed:
                    raise RuntimeError("the decode pool is closed")
                while self._idle:
                    child = self._idle.pop()
                    if child.process.is_alive():
                        self._busy += 1
                        return child
                    self._live.discard(child)  # died while idle: not any input's doing
                    child.conn.close()
                    self.recycled += 1
                    log.warning("decode process %d died while idle", child.pid)
                if self._busy < self._processes:
                    self._busy += 1
                    break
                self._changed.wait()
        try:
            return self._start()
        except BaseException:
            with self._changed:
                self._busy -= 1
                self._changed.notify_all()
            raise

    def _start(self) -> _Child:
        """A new child, once it says it is ready (its task loaded).

        Raises
        ------
        RuntimeError
            When the child dies or stays silent before it is ready.
        """
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=serve, args=(theirs, self._task), name="decode", daemon=True
        )
        process.start()
        theirs.close()
        child = _Child(process, ours)
        try:
            ready = ours.poll(_START_TIMEOUT_S) and ours.recv() == child.pid
        except (EOFError, OSError):
            ready = False  # it died before it was ready
        if not ready:
            self._stop(child, kill=True)
            raise RuntimeError(
                f"no decoding process can start (none was ready in {_START_TIMEOUT_S:g} s)"
            )
        with self._changed:
            self._live.add(child)
        return child

    def _exchange(
        self, child: _Child, request: tuple[Dataset, int | None]
    ) -> ChildReport | Exception:
        """Send ``request`` to ``child`` (taken) and wait at most ``decode_timeout_s`` for the
        answer; the child is given back, replaced or killed, whatever happens."""
        # Until an answer is read, the child's state is unknown: any way out kills it.
        replace: str | None = "a decode was interrupted"
        kill = True
        try:
            try:
                child.conn.send(request)
            except OSError as exc:
                replace = "a decoding process was gone before its decode"
                raise RuntimeError(replace) from exc
            if not child.conn.poll(self._timeout_s):
                replace = f"a decode ran past {self._timeout_s:g} s and its process was killed"
                with self._changed:
                    self.timed_out += 1
                raise NotAnalysable(
                    Reason.DECODE_TIMEOUT,
                    f"decoding ran past the limit of {self._timeout_s:g} s; "
                    "the decoding process was stopped",
                )
            try:
                answer: ChildReport | Exception = child.conn.recv()
            except (EOFError, OSError):
                replace = "a decoding process died"
                raise NotAnalysable(
                    Reason.UNDECODABLE, "the decoding process died on this Pixel Data"
                ) from None
            replace, kill = None, False
            if isinstance(answer, ChildReport):
                if answer.decodes >= self._decodes_per_child:
                    replace = f"a child ran {answer.decodes} decodes"
                elif answer.rss_bytes > self._max_rss_bytes:
                    replace = f"a child grew to {answer.rss_bytes // _MIB} MiB"
            return answer
        finally:
            self._give_back(child, replace, kill=kill)

    def _give_back(self, child: _Child, replace: str | None, *, kill: bool) -> None:
        """Put ``child`` back among the idle ones, or stop it when ``replace`` says why (or the
        pool is closing), then free its place."""
        with self._changed:
            keep = replace is None and not self._closed
        if replace is not None:
            log_at = logging.WARNING if kill else logging.INFO
            log.log(log_at, "decode process %d replaced: %s", child.pid, replace)
        if not keep:
            self._stop(child, kill=kill)
        with self._changed:
            if keep:
                self._idle.append(child)
            elif replace is not None:
                self.recycled += 1
            self._busy -= 1
            self._changed.notify_all()

    def _stop(self, child: _Child, *, kill: bool) -> None:
        """Kill ``child`` and reap it, or tell it to stop and let it exit on its own."""
        with self._changed:
            self._live.discard(child)
        if kill:
            child.process.kill()
            child.process.join(_EXIT_TIMEOUT_S)
        else:
            with contextlib.suppress(OSError):  # gone already: nothing to tell
                child.conn.send(None)
            with self._changed:
                self._stopping = [p for p in self._stopping if p.is_alive()]
                self._stopping.append(child.process)
        child.conn.close()


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
                decode_timeout_s=config.decode_timeout_s,
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

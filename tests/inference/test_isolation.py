"""Compressed Pixel Data decoded in child processes: a crash or a leak stays in the child.

Real processes, real codecs, a real leaking input (:mod:`tests.inference.leaky_jpeg`); the crash
is a real ``abort()`` in a child and the hang a decode that never returns, from decode tasks
defined here and in :mod:`tests.inference.hanging_decoder`.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom import uid
from pydicom.dataset import Dataset

from config.settings import DecodeIsolationSettings, Settings
from inference import isolation
from inference.decode import DecodedImage, decode_frame, decode_image
from inference.errors import NotAnalysable, Reason
from tests.helpers.fresh import run_fresh
from tests.inference.dicom_factory import compressed, make_image
from tests.inference.hanging_decoder import hang_on_rows
from tests.inference.leaky_jpeg import intact_lossless, leaking_lossless
from tests.inference.test_pixels_syntaxes import SYNTAX_FILES

MIB = 1024 * 1024
#: Decodes of the leaking input per measurement.
DECODES = 30
#: The process's resident growth over :data:`DECODES` refused decodes, in-process, is at least
#: this (measured: 33 MiB, about two 512 KiB images a decode); the precondition of the test.
LEAK_IN_PROCESS = 15 * MIB
#: What the parent may grow over the same decodes when they run in children (measured: 0.3-0.5 MiB).
GROWTH_WITH_POOL = 4 * MIB
NATIVE = Path("pydicom/src/pydicom/data/test_files/CT_small.dcm")
#: A Rows value no real test file has: the crashing task aborts on it, the hanging one hangs.
CRASH_ROWS = 1024
#: The decode time limit of the hang test: short, so that the test is quick, and still far more
#: than the small real decodes it runs take.
HANG_TIMEOUT_S = 3.0
#: How much later than the limit the refusal may come: killing and reaping the child, and
#: starting a child for the decode when none is free (milliseconds each); less than the limit,
#: so that a limit counted twice fails the test.
REFUSAL_MARGIN_S = 2.0
INNOCENT = Path("pydicom/src/pydicom/data/test_files/SC_rgb_jpeg_gdcm.dcm")


@dataclass(frozen=True)
class PoolConfig:
    enabled: bool = True
    processes: int = 2
    decodes_per_child: int = 200
    max_child_rss_mib: int = 1024
    decode_timeout_s: float = 60.0


def abort_on_1024_rows(ds: Dataset, min_long_side: int | None) -> DecodedImage:
    """A decode task that dies like a crashing codec (SIGABRT) on an image of 1024 rows."""
    if int(ds.Rows) == CRASH_ROWS:
        os.abort()
    return decode_frame(ds, min_long_side)


@pytest.fixture
def held() -> Iterator[list[bool]]:
    """Holds taken in a test are given back at its end, whatever happens."""
    holds: list[bool] = []
    yield holds
    for hold in holds:
        if hold:
            isolation.release()
    assert isolation.shared_pool() is None


def resident() -> int:
    gc.collect()
    return isolation.resident_bytes()


def refuse_repeatedly(ds: Dataset, times: int) -> None:
    for _ in range(times):
        with pytest.raises(NotAnalysable) as refused:
            decode_image(ds)
        assert refused.value.reason == Reason.UNDECODABLE


def test_isolation_is_on_by_default_with_a_decode_time_limit() -> None:
    defaults = Settings().inference.decode_isolation
    assert defaults.enabled
    assert defaults.decode_timeout_s == 60.0
    for refused in (0.0, -1.0, 3601.0):
        with pytest.raises(ValidationError, match="decode_timeout_s"):
            DecodeIsolationSettings(decode_timeout_s=refused)
    with pytest.raises(ValueError, match="decode timeout of 0 s"):
        isolation.DecodePool(
            decode_frame,
            processes=1,
            decodes_per_child=1,
            max_child_rss_mib=64,
            decode_timeout_s=0,
        )


def test_the_pool_decodes_as_the_process_does(shared_dir: Path, held: list[bool]) -> None:
    ds = intact_lossless(shared_dir)
    here = decode_image(ds)
    held.append(isolation.acquire(PoolConfig()))
    there = decode_image(ds)
    assert there.photometric == here.photometric
    assert there.pixels.dtype == here.pixels.dtype
    np.testing.assert_array_equal(there.pixels, here.pixels)


def test_every_syntax_decodes_the_same_in_a_child(shared_dir: Path, held: list[bool]) -> None:
    datasets = []
    for tsyntax, name in SYNTAX_FILES.items():
        ds = pydicom.dcmread(shared_dir / "dicom" / name)
        ds.file_meta.TransferSyntaxUID = uid.UID(tsyntax)
        datasets.append(ds)
    grey = (np.arange(900 * 1100, dtype=np.uint32).reshape(900, 1100) % 4096).astype(np.uint16)
    j2k = compressed(make_image(grey, bits_stored=12), uid.JPEG2000Lossless)
    here = [decode_image(ds) for ds in datasets] + [decode_image(j2k, min_long_side=256)]
    held.append(isolation.acquire(PoolConfig()))
    there = [decode_image(ds) for ds in datasets] + [decode_image(j2k, min_long_side=256)]
    assert there[-1].reduction == 2
    for mine, theirs in zip(here, there, strict=True):
        assert (theirs.photometric, theirs.reduction) == (mine.photometric, mine.reduction)
        assert theirs.pixels.dtype == mine.pixels.dtype
        np.testing.assert_array_equal(theirs.pixels, mine.pixels)


def decoded_or_reason(ds: Dataset) -> str | np.ndarray:
    try:
        return decode_image(ds).pixels
    except NotAnalysable as exc:
        return exc.reason


def test_a_child_that_dies_is_refused_and_replaced(shared_dir: Path, held: list[bool]) -> None:
    held.append(isolation.acquire(PoolConfig(), task=abort_on_1024_rows))
    crashing = intact_lossless(shared_dir)  # 1024 rows: the task aborts on it
    innocent = pydicom.dcmread(shared_dir / "dicom" / INNOCENT)
    expected = decode_frame(innocent, None).pixels

    with pytest.raises(NotAnalysable) as refused:
        decode_image(crashing)
    assert refused.value.reason == Reason.UNDECODABLE
    assert refused.value.message == "the decoding process died on this Pixel Data"

    # The parent lives on, and the pool with it: the next decode works.
    np.testing.assert_array_equal(decode_image(innocent).pixels, expected)
    # Native Pixel Data never goes to a child (this pool's children could not decode it).
    assert decode_image(pydicom.dcmread(shared_dir / "dicom" / NATIVE)).pixels.shape == (128, 128)

    # A child that dies ends its own decode only: those in flight in the others finish.
    batch = [innocent, innocent, crashing, innocent, innocent]
    with ThreadPoolExecutor(6) as threads:
        outcomes = list(threads.map(decoded_or_reason, batch))
    assert outcomes[2] == Reason.UNDECODABLE
    for outcome in outcomes[:2] + outcomes[3:]:
        assert isinstance(outcome, np.ndarray)
        np.testing.assert_array_equal(outcome, expected)


def test_a_decode_that_hangs_is_refused_and_only_its_child_is_killed(
    shared_dir: Path, held: list[bool]
) -> None:
    config = PoolConfig(decode_timeout_s=HANG_TIMEOUT_S)
    held.append(isolation.acquire(config, task=partial(hang_on_rows, CRASH_ROWS)))
    pool = isolation.shared_pool()
    assert pool is not None
    hanging = intact_lossless(shared_dir)  # 1024 rows: the task never returns on it
    innocent = pydicom.dcmread(shared_dir / "dicom" / INNOCENT)
    expected = decode_frame(innocent, None).pixels
    np.testing.assert_array_equal(decode_image(innocent).pixels, expected)  # a child runs
    seen = set(pool.pids())

    threads = ThreadPoolExecutor(4)
    try:
        started = time.monotonic()
        hung = threads.submit(decode_image, hanging)
        # While one child hangs, the other decodes, again and again, undisturbed.
        others: list[Future[str | np.ndarray]] = [
            threads.submit(decoded_or_reason, innocent) for _ in range(6)
        ]
        for other in others:
            outcome = other.result(timeout=HANG_TIMEOUT_S + REFUSAL_MARGIN_S)
            assert isinstance(outcome, np.ndarray), outcome
            np.testing.assert_array_equal(outcome, expected)
        assert time.monotonic() - started < HANG_TIMEOUT_S  # not held up by the hung one
        seen |= pool.pids()
        with pytest.raises(NotAnalysable) as refused:
            hung.result(timeout=HANG_TIMEOUT_S + REFUSAL_MARGIN_S)
        waited = time.monotonic() - started
    finally:
        threads.shutdown(wait=False, cancel_futures=True)
    assert refused.value.reason == Reason.DECODE_TIMEOUT == "decode_timeout"
    assert refused.value.message == (
        "decoding ran past the limit of 3 s; the decoding process was stopped"
    )
    assert waited >= HANG_TIMEOUT_S  # not given up early

    # Exactly one child was replaced, the one that hung: it is gone, killed and reaped, and
    # the child that decoded the others is still the same process.
    survivors = pool.pids()
    assert len(seen) == 2
    assert len(survivors) == 1
    assert (pool.timed_out, pool.recycled) == (1, 1)
    (killed,) = seen - survivors
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)

    # The pool goes on: the next image decodes, in the surviving child.
    np.testing.assert_array_equal(decode_image(innocent).pixels, expected)
    assert pool.pids() == survivors
    assert decode_image(pydicom.dcmread(shared_dir / "dicom" / NATIVE)).pixels.shape == (128, 128)


def measure_growth(shared: str) -> None:
    """Print the resident growth over leaking decodes, in-process then with the pool (JSON).

    Run in a fresh interpreter (below): in a process that has already freed memory, as the
    test run's has, leaked blocks fill the allocator's free lists instead of growing the
    resident size, and the in-process growth the test relies on does not show.
    """
    leaking = leaking_lossless(Path(shared))
    refuse_repeatedly(leaking, 3)  # warm-up: allocations made once
    before = resident()
    refuse_repeatedly(leaking, DECODES)
    in_process = resident() - before
    hold = isolation.acquire(PoolConfig(decodes_per_child=10))
    try:
        refuse_repeatedly(leaking, 3)
        before = resident()
        refuse_repeatedly(leaking, DECODES)
        with_pool = resident() - before
        pool = isolation.shared_pool()
        recycled = pool.recycled if pool is not None else -1
    finally:
        if hold:
            isolation.release()
    print(json.dumps({"in_process": in_process, "with_pool": with_pool, "recycled": recycled}))


def test_the_parent_does_not_grow_on_leaking_input(shared_dir: Path) -> None:
    code = (
        "from tests.inference.test_isolation import measure_growth; "
        f"measure_growth({str(shared_dir)!r})"
    )
    growth = json.loads(run_fresh(code, timeout_s=600).strip().splitlines()[-1])
    # The input leaks when decoded here: otherwise the rest proves nothing.
    in_process = growth["in_process"]
    assert in_process >= LEAK_IN_PROCESS, f"grew {in_process / MIB:.1f} MiB in-process"
    with_pool = growth["with_pool"]
    assert with_pool <= GROWTH_WITH_POOL, f"grew {with_pool / MIB:.1f} MiB with the pool"
    assert growth["recycled"] >= 2


def test_a_child_that_grows_is_replaced(shared_dir: Path, held: list[bool]) -> None:
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=context) as probe:
        baseline = probe.submit(isolation.resident_bytes).result()
    # Far more decodes per child than the test runs: only the resident size can recycle.
    config = PoolConfig(
        processes=1, decodes_per_child=10_000, max_child_rss_mib=baseline // MIB + 12
    )
    held.append(isolation.acquire(config))
    refuse_repeatedly(leaking_lossless(shared_dir), DECODES)
    pool = isolation.shared_pool()
    assert pool is not None
    assert pool.recycled >= 1


def test_holds_are_counted_and_the_last_stops_the_pool(held: list[bool]) -> None:
    assert not isolation.acquire(PoolConfig(enabled=False))
    assert isolation.shared_pool() is None
    assert isolation.acquire(PoolConfig())
    assert isolation.acquire(PoolConfig())
    pool = isolation.shared_pool()
    isolation.release()
    assert isolation.shared_pool() is pool
    isolation.release()
    assert isolation.shared_pool() is None
    with pytest.raises(RuntimeError):
        isolation.release()

"""What decoding in child processes costs, and what it saves, in the parent (run by hand).

    python bench/bench_decode_isolation.py [--shared ../shared] [--runs 15] [--decodes 30]

Cost: decoding large compressed images in this process (``decode_frame``) and through the decode
pool (``DecodePool.decode``, default settings), timed alternately so that load changes affect
both; the difference is what sending the frame to a child and the decoded array back costs.
The images are the WG04 RG2 radiograph as JPEG Lossless (2140 x 1760, 16 bits: 7.2 MiB
decoded) and a 2560 x 2048 16-bit image made from it, RLE compressed here (10 MiB decoded).
Medians in ms.

Transfer: a child making a 10 MiB array and the parent receiving it, pickled through the
executor's pipe or left in shared memory as the pool does (``inference.isolation.SharedImage``).

Saving: the parent's resident growth over ``--decodes`` refused decodes of the leaking JPEG
Lossless input of ``tests/inference/leaky_jpeg.py``, in this process and through the pool.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread, uid
from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.settings import DecodeIsolationSettings
from inference import isolation
from inference.decode import DecodedImage, decode_frame, decode_image
from inference.errors import NotAnalysable
from tests.inference.dicom_factory import compressed, make_image
from tests.inference.leaky_jpeg import leaking_lossless

RG2_JPLL = Path("dicom/pylibjpeg-data/ljdata/ds/JPEGLosslessSV1/RG2_JPLL.dcm")
MIB = 1024 * 1024


@dataclass(frozen=True)
class Timing:
    here_ms: float
    pool_ms: float


def median_ms(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def compare(ds: Dataset, pool: isolation.DecodePool, runs: int) -> Timing:
    """Median times of the decoding step, here and in the pool, alternating; the header checks
    before and after are the same on both paths and left out."""
    here, there = [], []
    for _ in range(runs):
        here.append(median_ms(lambda: decode_frame(ds, None), 1))
        there.append(median_ms(lambda: pool.decode(isolation.pixel_module(ds), None), 1))
    return Timing(statistics.median(here), statistics.median(there))


def frame_by_pipe(nbytes: int) -> NDArray[np.uint16]:
    """A child's answer of ``nbytes`` sent back as a pickled array (the executor's pipe)."""
    return np.ones(nbytes // 2, dtype=np.uint16)


def frame_by_shared_memory(nbytes: int) -> isolation.SharedImage:
    """The same answer left in shared memory (:class:`inference.isolation.SharedImage`)."""
    return isolation.SharedImage.from_image(DecodedImage(frame_by_pipe(nbytes), "MONOCHROME2"))


def transfer(runs: int, nbytes: int = 10 * MIB) -> tuple[float, float]:
    """Median ms for a child to make and return ``nbytes`` of pixels: by pipe, by shared memory."""
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=context) as child:
        child.submit(frame_by_pipe, 2).result()
        by_pipe = median_ms(lambda: child.submit(frame_by_pipe, nbytes).result(), runs)
        by_shm = median_ms(
            lambda: child.submit(frame_by_shared_memory, nbytes).result().take(), runs
        )
    return by_pipe, by_shm


def resident_growth(ds: Dataset, decodes: int) -> int:
    def refuse() -> None:
        try:
            decode_image(ds)
        except NotAnalysable:
            return
        raise AssertionError("the leaking input was decoded, not refused")

    for _ in range(3):
        refuse()
    gc.collect()
    before = isolation.resident_bytes()
    for _ in range(decodes):
        refuse()
    gc.collect()
    return isolation.resident_bytes() - before


def large_rle(real: Dataset) -> Dataset:
    pixels = decode_image(real).pixels
    big = cv2.resize(pixels, (2560, 2048), interpolation=cv2.INTER_LINEAR)
    return compressed(make_image(big, bits_stored=int(real.BitsStored)), uid.RLELossless)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--decodes", type=int, default=30)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    settings = DecodeIsolationSettings()
    # The leak first: large decodes before it leave freed heap that leaked blocks reuse unseen.
    leaking = leaking_lossless(args.shared)
    here_growth = resident_growth(leaking, args.decodes)
    real = dcmread(args.shared / RG2_JPLL)
    images = {"RG2 JPEG Lossless": real, "2560x2048 RLE": large_rle(real)}
    isolation.acquire(settings)
    try:
        pool = isolation.shared_pool()
        assert pool is not None
        for name, ds in images.items():
            decode_image(ds)  # the children start, and the codecs warm up
            size = decode_image(ds).pixels.nbytes / MIB
            sent = len(ds.PixelData) / MIB
            timing = compare(ds, pool, args.runs)
            print(
                f"{name:18s} {sent:4.1f} MiB sent, {size:4.1f} MiB decoded: "
                f"here {timing.here_ms:6.1f} ms, "
                f"pool {timing.pool_ms:6.1f} ms, cost {timing.pool_ms - timing.here_ms:+6.1f} ms"
            )
        pool_growth = resident_growth(leaking, args.decodes)
        recycled = pool.recycled
    finally:
        isolation.release()
    by_pipe, by_shm = transfer(args.runs)
    print(
        f"10 MiB frame back from a child: by pipe {by_pipe:.1f} ms, "
        f"by shared memory {by_shm:.1f} ms"
    )
    print(
        f"leaking JPEG Lossless, {args.decodes} refused decodes: parent grew "
        f"{here_growth / MIB:.1f} MiB here, {pool_growth / MIB:.1f} MiB with the pool "
        f"({settings.processes} children, {settings.decodes_per_child} decodes per child, "
        f"{settings.max_child_rss_mib} MiB; {recycled} children replaced)"
    )


if __name__ == "__main__":
    main()

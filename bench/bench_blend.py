"""Heat-map blend: the per-pixel formula over hot pixels against the bounding-rectangle version.

    python bench/bench_blend.py [--runs 5]

A 2048 x 1678 radiograph-sized plane (the size of an SC of a 2500 x 2048 image) with three heat
maps: mostly highlighted, about 40 % highlighted, and one corner. Prints the median time of each
version and whether their pixels are equal. Run by hand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reporting.render import HEAT_FLOOR, blend_heatmap
from tests.reporting.test_render import blend_pixel_by_pixel

ROWS, COLUMNS = 2048, 1678


def median_ms(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    display = rng.random((ROWS, COLUMNS), dtype=np.float32)
    blob = cv2.GaussianBlur(rng.random((20, 20), dtype=np.float32), (5, 5), 2)
    blob = (blob - blob.min()) / (blob.max() - blob.min())
    smooth = cv2.resize(blob, (COLUMNS, ROWS))
    corner = np.add.outer(np.arange(ROWS), np.arange(COLUMNS)) < 800
    cases = {
        "mostly highlighted": smooth,
        "partly highlighted": np.clip(smooth - 0.45, 0, 1) / 0.55,
        "one corner": np.where(corner, 0.9, 0.0).astype(np.float32),
    }
    for name, heat in cases.items():
        reference = median_ms(lambda h=heat: blend_pixel_by_pixel(display, h), args.runs)
        rectangle = median_ms(lambda h=heat: blend_heatmap(display, h), args.runs)
        equal = np.array_equal(blend_heatmap(display, heat), blend_pixel_by_pixel(display, heat))
        print(
            f"{name} ({float((heat > HEAT_FLOOR).mean()):.0%} hot): per pixel {reference:.1f} ms,"
            f" rectangle {rectangle:.1f} ms, equal pixels: {equal}"
        )


if __name__ == "__main__":
    main()

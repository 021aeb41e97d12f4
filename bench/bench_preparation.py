"""Where preparing one radiograph for the model spends its time (run by hand).

    python bench/bench_preparation.py [--shared ../shared] [--runs 15]

On the WG04 RG2 and RG3 uncompressed radiographs: the grey chain step by step against one
table look-up per pixel (timed alternately, so that load changes affect both), then the two
area-averaging resizes of ``prepare`` (anatomy-crop search image and letterbox). On RG3 JPEG 2000
lossless: decoding at the resolution level a 320 px model uses. Medians in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

from inference.decode import decode_image
from inference.pixels import grey_lookup, grey_stepwise
from inference.preprocess import anatomy_crop, letterbox

WG04_REF = Path("dicom/robyoung-dicom-test-files/data/WG04/REF")
J2K = Path("dicom/pydicom-data/data_store/data/RG3_J2KR.dcm")
MODEL_SIZE = 320


def median_ms(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    for name in ("RG2_UNC", "RG3_UNC"):
        ds = dcmread(args.shared / WG04_REF / name)
        pixels = decode_image(ds, min_long_side=None).pixels
        times: dict[str, list[float]] = {"stepwise": [], "lookup": []}
        for _ in range(args.runs):
            for label, chain in (("stepwise", grey_stepwise), ("lookup", grey_lookup)):
                start = time.perf_counter()
                chain(pixels, ds)
                times[label].append(time.perf_counter() - start)
        medians = {label: statistics.median(values) * 1000 for label, values in times.items()}
        grey = grey_lookup(pixels, ds)
        crop = median_ms(lambda g=grey: anatomy_crop(g), args.runs)
        box = anatomy_crop(grey)
        region = grey[box.y0 : box.y1, box.x0 : box.x1]
        fit = median_ms(lambda r=region: letterbox(r, MODEL_SIZE), args.runs)
        print(
            f"{name} {pixels.shape[1]} x {pixels.shape[0]}: grey stepwise"
            f" {medians['stepwise']:.1f} ms, lookup {medians['lookup']:.1f} ms;"
            f" anatomy crop {crop:.1f} ms, letterbox to {MODEL_SIZE} px {fit:.1f} ms"
        )
    ds = dcmread(args.shared / J2K)
    decoded = decode_image(ds, min_long_side=2 * MODEL_SIZE)
    decode = median_ms(lambda: decode_image(ds, min_long_side=2 * MODEL_SIZE), args.runs)
    print(
        f"{J2K.name} {ds.Columns} x {ds.Rows}: JPEG 2000 decode at level {decoded.reduction}"
        f" ({decoded.pixels.shape[1]} x {decoded.pixels.shape[0]}) {decode:.1f} ms"
    )


if __name__ == "__main__":
    main()

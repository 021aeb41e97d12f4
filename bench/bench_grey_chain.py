"""The grey chain, step by step against one table look-up per pixel (run by hand).

    python bench/bench_grey_chain.py [--shared ../shared] [--runs 15]

Prints the median milliseconds of ``grey_stepwise`` and ``grey_lookup`` on the WG04 RG2 and RG3
uncompressed radiographs, the two timed alternately so that load changes affect both.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from pydicom import dcmread

from inference.decode import decode_image
from inference.pixels import grey_lookup, grey_stepwise

FILES = ["RG2_UNC", "RG3_UNC"]
WG04_REF = Path("dicom/robyoung-dicom-test-files/data/WG04/REF")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    for name in FILES:
        ds = dcmread(args.shared / WG04_REF / name)
        pixels = decode_image(ds, min_long_side=None).pixels
        times: dict[str, list[float]] = {"stepwise": [], "lookup": []}
        for _ in range(args.runs):
            for label, chain in (("stepwise", grey_stepwise), ("lookup", grey_lookup)):
                start = time.perf_counter()
                chain(pixels, ds)
                times[label].append(time.perf_counter() - start)
        medians = {label: statistics.median(values) * 1000 for label, values in times.items()}
        print(
            f"{name} {pixels.shape[1]} x {pixels.shape[0]}: stepwise {medians['stepwise']:.1f} ms,"
            f" lookup {medians['lookup']:.1f} ms"
        )


if __name__ == "__main__":
    main()

"""How long the slowest real compressed decodes take: the basis of ``decode_timeout_s`` (by hand).

    python bench/bench_decode_time.py [--shared ../shared] [--runs 3] [--top 8]

Every single-frame file of ``<shared>/dicom/INVENTORY.tsv`` with compressed Pixel Data that the
header checks accept is decoded ``--runs`` times through a decode pool of one child, as the
service decodes (the frame to the child and back included), at full resolution: the slowest
path (the analysis decodes JPEG 2000 at a reduced level, the viewer's 1:1 zoom does not). The
slowest run of each file is kept, refusals (``undecodable``) included: they run against the
limit too. Then the largest image a radiography detector makes, 4288 x 4288 at 16 bits (a
43 x 43 cm flat panel at 100 um), made from the largest real radiograph (WG04 RG2, resized)
and compressed here with each of the slowest codecs, JPEG 2000 and JPEG-LS lossless.
Prints the slowest decodes, in s.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
from pydicom import dcmread, uid
from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference import isolation
from inference.decode import NATIVE_TRANSFER_SYNTAXES, check_analysable, decode_frame
from inference.errors import NotAnalysable
from tests.inference.dicom_factory import compressed, make_image

RG2_UNC = Path("dicom/robyoung-dicom-test-files/data/WG04/REF/RG2_UNC")
#: Decoded once before timing: the child starts and the codecs warm up.
WARM_UP = Path("dicom/pylibjpeg-data/ljdata/ds/JPEGLosslessSV1/RG2_JPLL.dcm")
#: A 43 x 43 cm flat-panel detector at 100 um pixel pitch (the largest radiography format).
DETECTOR_SIDE = 4288
#: The pool's limit while timing: nothing real comes near it.
NO_LIMIT_S = 3600.0


@dataclass(frozen=True)
class Timed:
    name: str
    size: str
    outcome: str
    slowest_s: float


def compressed_files(shared: Path) -> list[Path]:
    """The inventory's files with an encapsulated transfer syntax."""
    with (shared / "dicom" / "INVENTORY.tsv").open(newline="") as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    return [
        shared / "dicom" / row["path"]
        for row in rows
        if row["transfer_syntax"].split(" ")[0] not in NATIVE_TRANSFER_SYNTAXES
    ]


def time_decodes(pool: isolation.DecodePool, name: str, ds: Dataset, runs: int) -> Timed | None:
    """The slowest of ``runs`` decodes of ``ds`` through ``pool``; None if the header is refused."""
    try:
        check_analysable(ds)
    except NotAnalysable:
        return None
    part = isolation.pixel_module(ds)
    slowest = 0.0
    outcome = "decoded"
    for _ in range(runs):
        started = time.perf_counter()
        try:
            pool.decode(part, None)
        except NotAnalysable as exc:
            outcome = exc.reason
        slowest = max(slowest, time.perf_counter() - started)
    size = f"{ds.Columns}x{ds.Rows}x{ds.get('SamplesPerPixel', 1)}"
    return Timed(name, size, outcome, slowest)


def detector_sized(shared: Path, transfer_syntax: str) -> Dataset:
    real = dcmread(shared / RG2_UNC)
    big = cv2.resize(real.pixel_array, (DETECTOR_SIDE, DETECTOR_SIDE), cv2.INTER_LINEAR)
    return compressed(make_image(big, bits_stored=int(real.BitsStored)), transfer_syntax)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    pool = isolation.DecodePool(
        decode_frame,
        processes=1,
        decodes_per_child=200,
        max_child_rss_mib=1024,
        decode_timeout_s=NO_LIMIT_S,
    )
    try:
        pool.decode(isolation.pixel_module(dcmread(args.shared / WARM_UP)), None)
        timed = []
        files = compressed_files(args.shared)
        for path in files:
            name = str(path.relative_to(args.shared / "dicom"))
            # Some files have no preamble; one without file meta is refused by the checks.
            result = time_decodes(pool, name, dcmread(path, force=True), args.runs)
            if result is not None:
                timed.append(result)
        timed.sort(key=lambda t: t.slowest_s, reverse=True)
        print(f"{len(timed)} of {len(files)} compressed files pass the header checks")
        for t in timed[: args.top]:
            print(f"{t.slowest_s:7.3f} s  {t.size:14s} {t.outcome:12s} {t.name}")
        for syntax in (uid.JPEG2000Lossless, uid.JPEGLSLossless):
            ds = detector_sized(args.shared, syntax)
            made = time_decodes(pool, f"RG2 resized, {syntax.name}", ds, args.runs)
            assert made is not None
            print(f"{made.slowest_s:7.3f} s  {made.size:14s} {made.outcome:12s} {made.name}")
    finally:
        pool.close()


if __name__ == "__main__":
    main()

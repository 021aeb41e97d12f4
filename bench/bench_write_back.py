"""Which write-back helps a data set written while it arrives: none, sync_file_range, fdatasync.

Feeds N data sets of 10.5 MB, in 64 KiB fragments at a paced network rate (default 400 MB/s,
about what one association delivers on loopback), into ``dicom_node.receiving.IncomingDataSet``
in a temporary folder beside the storage folder, one after the other as one association does,
and reports per strategy the median time from the last fragment to the file being durable
(the wait a C-STORE's sender sees) and the files/s sustained. Strategies alternate data set by
data set, so they share the disk's conditions.

    python bench/bench_write_back.py --folder ./fracture-gateway-data --files 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.ingest import file_meta_for
from dicom_node.receiving import IncomingDataSet, WriteBack
from dicom_node.storage import InstanceStore

SIZE = 10_500_000
FRAGMENT = 65536 - 12  # a P-DATA-TF of 64 KiB less the PDU and PDV headers


def receive_one(
    store: InstanceStore, data: bytes, strategy: WriteBack, rate_mb_s: float
) -> tuple[float, float]:
    """One data set at the paced rate; (seconds in all, seconds from last fragment to durable)."""
    meta = file_meta_for("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4", "1.2.840.10008.1.2.1")
    start = time.perf_counter()
    incoming = IncomingDataSet(store, meta, write_back=strategy)
    view = memoryview(data)
    per_byte = 1 / (rate_mb_s * 1e6)
    for offset in range(0, len(data), FRAGMENT):
        fragment = view[offset : offset + FRAGMENT]
        incoming.write(fragment)
        ahead = start + (offset + len(fragment)) * per_byte - time.perf_counter()
        if ahead > 0.001:  # the network's pace (sleeping, so the writer thread can run)
            time.sleep(ahead)
    last = time.perf_counter()
    received = incoming.finish()
    received.durable()
    end = time.perf_counter()
    received.discard()
    return end - start, end - last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("."))
    parser.add_argument("--files", type=int, default=30, help="data sets per strategy")
    parser.add_argument("--rate", type=float, default=400.0, help="network MB/s to pace at")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(SIZE)
    strategies = list(WriteBack)
    totals: dict[WriteBack, list[float]] = {s: [] for s in strategies}
    tails: dict[WriteBack, list[float]] = {s: [] for s in strategies}
    os.sync()
    with tempfile.TemporaryDirectory(prefix="bench-write-back-", dir=args.folder) as tmp:
        store = InstanceStore(Path(tmp))
        for _ in range(args.files):
            for strategy in strategies:
                total, tail = receive_one(store, data, strategy, args.rate)
                totals[strategy].append(total)
                tails[strategy].append(tail)
    print(f"{args.files} data sets of {SIZE / 1e6:.1f} MB per strategy, paced at {args.rate} MB/s")
    for strategy in strategies:
        print(
            f"  {strategy.value:<10} last fragment to durable: median "
            f"{statistics.median(tails[strategy]) * 1000:6.1f} ms; "
            f"{len(totals[strategy]) / sum(totals[strategy]):5.1f} files/s"
        )


if __name__ == "__main__":
    main()

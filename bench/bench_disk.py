"""The storage folder's durable write rate: what a C-STORE receiver that fsyncs can reach.

Writes N files of 10.5 MB (the size of bench_ingest.py's images) into a temporary folder beside
the storage folder, each written and fsynced before the next, as our SCP stores instances, and
prints the median time per file and the sustained MB/s over the second half of the run (after
any write cache or burst allowance of the disk is used up).

    python bench/bench_disk.py --folder ./fracture-gateway-data --files 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

SIZE = 10_500_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("."))
    parser.add_argument("--files", type=int, default=40)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(SIZE)
    os.sync()
    with tempfile.TemporaryDirectory(prefix="bench-disk-", dir=args.folder) as tmp:
        seconds = []
        for i in range(args.files):
            start = time.perf_counter()
            fd = os.open(Path(tmp) / f"{i:04d}.dcm", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            seconds.append(time.perf_counter() - start)
    second_half = seconds[len(seconds) // 2 :]
    print(
        f"{args.files} files of {SIZE / 1e6:.1f} MB, write + fsync each: median "
        f"{statistics.median(seconds) * 1000:.1f} ms per file; first 5 "
        f"{[round(s * 1000) for s in seconds[:5]]} ms; second half "
        f"{SIZE * len(second_half) / sum(second_half) / 1e6:.0f} MB/s sustained "
        f"({len(second_half) / sum(second_half):.1f} files/s)"
    )


if __name__ == "__main__":
    main()

"""Resident memory left behind by the received-instance path, per transfer syntax and outcome.

    python bench/bench_decode_leak.py fuzz-corpus/ [--loops 8]

Runs every input of a fuzzing corpus (``python -m tests.fuzz.fuzz_decode ... fuzz-corpus/``)
through :mod:`tests.fuzz.received`, groups the inputs that reach the decoder by transfer syntax
and outcome, then runs each group ``--loops`` times and prints how much the resident size grew
in each loop (KiB). A group that grows at every loop leaks; one that grows once is warming up.
Run by hand.
"""

from __future__ import annotations

import argparse
import collections
import gc
import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz.received import Outcome, received_instance_path, split_part10


def resident_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--loops", type=int, default=8)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    inputs = [path.read_bytes() for path in sorted(args.corpus.iterdir()) if path.is_file()]
    with received_instance_path() as received:
        groups: dict[tuple[str, str], list[bytes]] = collections.defaultdict(list)
        for data in inputs:
            outcome = received(data)
            received_as = split_part10(data)
            if received_as and outcome in (Outcome.PREPARED, Outcome.NOT_ANALYSABLE):
                groups[(received_as[0], outcome.value)].append(data)
        for (tsyntax, outcome), group in sorted(groups.items()):
            growth = []
            for _ in range(args.loops):
                gc.collect()
                before = resident_kib()
                for data in group:
                    received(data)
                gc.collect()
                growth.append(resident_kib() - before)
            print(f"{tsyntax:24s} {outcome:15s} {len(group):4d} inputs, KiB per loop: {growth}")


if __name__ == "__main__":
    main()

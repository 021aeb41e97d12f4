"""CPU of the DICOM node while peers hold associations open and send nothing (run by hand).

Starts a node in this process (no model, no workers), has a peer process open N associations
(C-ECHO contexts) and keep them idle, and reports this process's CPU time over a window as a
share of one core. ``--reactor both`` measures our event-driven reactor
(:mod:`dicom_node.reactor`) and pynetdicom's own 1 ms poll (the same loop, swapped back in) in
alternating rounds of one run.

    .venv/bin/python bench/bench_idle_associations.py --associations 0 1 4 --rounds 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pynetdicom.association import Association

from dicom_node.reactor import ReactiveAssociation
from gateway.service import Service
from tests.helpers.node import make_settings

PEER = """
import sys, threading
from pynetdicom import AE
ae = AE(ae_title="TESTSCU")
ae.add_requested_context("1.2.840.10008.1.1")
port, count = int(sys.argv[1]), int(sys.argv[2])
held = [ae.associate("127.0.0.1", port, ae_title="FRACTUREGW") for _ in range(count)]
assert all(a.is_established for a in held)
print("up", flush=True)
sys.stdin.readline()
for a in held:
    a.release()
"""
OURS = ReactiveAssociation._run_reactor


def measure(count: int, window_s: float) -> float:
    """Share of one core this process used while ``count`` associations were held idle."""
    with tempfile.TemporaryDirectory() as home:
        service = Service(make_settings(Path(home)))
        service.start(dicom=True, worker=False)
        try:
            peer = subprocess.Popen(
                [sys.executable, "-c", PEER, str(service.dicom_port), str(count)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert peer.stdout is not None
            assert peer.stdin is not None
            if peer.stdout.readline().strip() != "up":
                raise SystemExit("the peer could not associate")
            threading.Event().wait(1.0)  # let the associations settle into idling
            cpu, wall = time.process_time(), time.monotonic()
            threading.Event().wait(window_s)
            share = (time.process_time() - cpu) / (time.monotonic() - wall)
            peer.stdin.write("\n")
            peer.stdin.flush()
            peer.wait(30)
        finally:
            service.stop()
    return share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, nargs="+", default=[0, 1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reactor", choices=["ours", "pynetdicom", "both"], default="both")
    args = parser.parse_args()
    reactors = ["ours", "pynetdicom"] if args.reactor == "both" else [args.reactor]
    shares: dict[tuple[str, int], list[float]] = {}
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    for round_number in range(args.rounds):
        order = reactors if round_number % 2 == 0 else reactors[::-1]
        for reactor in order:
            ReactiveAssociation._run_reactor = (  # type: ignore[method-assign]
                OURS if reactor == "ours" else Association._run_reactor
            )
            for count in args.associations:
                share = measure(count, args.seconds)
                shares.setdefault((reactor, count), []).append(share)
                print(f"round {round_number + 1} {reactor:10} {count} idle: {100 * share:.1f} %")
    ReactiveAssociation._run_reactor = OURS  # type: ignore[method-assign]
    print("\nmedian CPU of the node process, % of one core:")
    for count in args.associations:
        cells = ", ".join(
            f"{reactor} {100 * statistics.median(shares[(reactor, count)]):.1f}"
            for reactor in reactors
        )
        print(f"{count} idle associations: {cells}")


if __name__ == "__main__":
    main()

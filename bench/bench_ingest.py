"""Ingest throughput: N synthetic 10 MB 16-bit DX images over 1 and 4 associations.

Sends with dcmtk ``storescu`` (one process per association, so the sender is never the
bottleneck) to any SCP, and reports images/s and MB/s. ``--compare`` starts our node
(``fracture-gateway serve``, durable: fsync and database row before Success) and dcmtk
``storescp`` (bit-preserving, TCP_NODELAY=1, same maximum PDU) itself, runs both in one
go and prints the ratio.

    python bench/bench_ingest.py --compare --images 60 --rounds 3
    python bench/bench_ingest.py --host 127.0.0.1 --port 11112 --aet FRACTUREGW --images 60

Run by hand; results go to docs/PERFORMANCE.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROWS, COLUMNS = 2560, 2048  # 2 bytes per pixel: 10.5 MB of pixel data
MAX_PDU = 65536


def make_images(folder: Path, count: int) -> list[Path]:
    """Write ``count`` distinct 16-bit DX files (one study) into ``folder``."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4096, size=(ROWS, COLUMNS), dtype=np.uint16)
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(count):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = "BENCH^INGEST", "BENCH"
        ds.Modality = "DX"
        ds.InstanceNumber = i + 1
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.roll(base, i, axis=1).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"img{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(paths: list[Path], host: str, port: int, aet: str, associations: int) -> float:
    """Send all files over ``associations`` parallel storescu processes; returns seconds."""
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("storescu (dcmtk) is needed")
    shares = [paths[i::associations] for i in range(associations)]
    # Start every run with no dirty pages: data written before (the generated images, the
    # previous receiver's files) would otherwise be flushed during this run, and on ext4
    # (data=ordered) a receiver's fsync waits for that flush, one that never fsyncs does not.
    os.sync()
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [storescu, "-aet", "BENCHSCU", "-aec", aet, "--max-pdu", str(MAX_PDU), host, str(port)]
            + [str(p) for p in share],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for share in shares
        if share
    ]
    failures = [p.stderr.read().decode() for p in procs if p.wait() != 0 and p.stderr]
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"storescu failed: {failures[0][:500]}")
    return elapsed


def wait_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on port {port}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_case(
    label: str, paths: list[Path], port: int, aet: str, counts: list[int]
) -> dict[int, float]:
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    rates = {}
    for n in counts:
        seconds = send(paths, "127.0.0.1", port, aet, n)
        rates[n] = len(paths) / seconds
        print(
            f"{label:<28} {n} assoc: {len(paths) / seconds:7.1f} images/s"
            f" {size_mb / seconds:8.1f} MB/s ({seconds:.2f} s)",
            flush=True,
        )
    return rates


def start_gateway(work: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FRACTURE_GATEWAY_HOME": str(work / "gateway-home"),
        "FRACTURE_GATEWAY_NODE__BIND_ADDRESS": "127.0.0.1",
        "FRACTURE_GATEWAY_NODE__PORT": str(port),
        "FRACTURE_GATEWAY_NODE__MAXIMUM_PDU_SIZE": str(MAX_PDU),
        "FRACTURE_GATEWAY_NODE__DUPLICATE_POLICY": "keep_first",
        "FRACTURE_GATEWAY_INFERENCE__ENABLED": "false",
        "FRACTURE_GATEWAY_GROUPING__QUIET_PERIOD_S": "3600",
        "FRACTURE_GATEWAY_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--no-api", "--no-worker"], env=env
    )
    wait_port(port)
    return proc


def start_storescp(work: Path, port: int) -> subprocess.Popen[bytes]:
    out = work / "storescp-out"
    out.mkdir()
    storescp = shutil.which("storescp")
    if storescp is None:
        raise SystemExit("storescp (dcmtk) is needed")
    proc = subprocess.Popen(
        # +B (bit-preserving): write the received bytes as they are, storescp's fastest mode and
        # the same work our node does (without the fsync and the database row).
        [storescp, "+B", "--max-pdu", str(MAX_PDU), "--output-directory", str(out), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    wait_port(port)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--aet", default="FRACTUREGW")
    parser.add_argument("--compare", action="store_true", help="run our node and storescp")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (--compare)")
    parser.add_argument("--receivers", type=int, default=0, help="extra gateway processes")
    args = parser.parse_args()
    global RECEIVERS
    RECEIVERS = args.receivers

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        images = work / "images"
        images.mkdir()
        paths = make_images(images, args.images)
        print(
            f"{len(paths)} images of {paths[0].stat().st_size / 1e6:.1f} MB; "
            f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
            flush=True,
        )
        if not args.compare:
            if args.port is None:
                parser.error("--port is required without --compare")
            rates = {}
            for n in args.associations:
                seconds = send(paths, args.host, args.port, args.aet, n)
                rates[n] = len(paths) / seconds
                print(f"{n} assoc: {rates[n]:.1f} images/s", flush=True)
            return
        # Rounds alternate the two receivers, each time a fresh one (so every image is really
        # stored and, for the gateway, recorded); medians damp the machine's load swings.
        cases = (
            ("dcmtk storescp", start_storescp, "ANY-SCP"),
            ("fracture-gateway (durable)", start_gateway, "FRACTUREGW"),
        )
        rates: dict[tuple[str, int], list[float]] = {}
        for round_number in range(args.rounds):
            for n in args.associations:
                for label, starter, aet in cases:
                    port = free_port()
                    case = work / f"{label.split()[0]}-{n}-{round_number}"
                    case.mkdir()
                    proc = starter(case, port)
                    try:
                        rate = run_case(label, paths, port, aet, [n])[n]
                        rates.setdefault((label, n), []).append(rate)
                    finally:
                        proc.terminate()
                        proc.wait(60)
        print("\nmedians over", args.rounds, "rounds:")
        for n in args.associations:
            ours = statistics.median(rates[("fracture-gateway (durable)", n)])
            theirs = statistics.median(rates[("dcmtk storescp", n)])
            print(
                f"{n} assoc: storescp {theirs:.1f} images/s, fracture-gateway {ours:.1f} "
                f"images/s, ratio {ours / theirs:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Ingest throughput: N synthetic 10 MB 16-bit DX images over 1 and 4 associations.

Sends with dcmtk ``storescu`` (one process per association, so the sender is never the
bottleneck) to any SCP, and reports images/s and MB/s. ``--compare`` measures, side by side in
one run, with rounds that alternate the order of the cases:

* ``disk``: the storage folder's own limit, N files of the images' size each written and
  fsynced before the next (what any receiver that makes each image durable is bound by);
* ``fracture-gateway``: the full service (``fracture-gateway serve``: DICOM node, API, job
  worker, model loaded), durable (fsync, rename, folder fsync and database row before Success);
* ``Orthanc``: the Debian package as shipped (``SyncStorageArea`` on, its default: durable);
* ``storescp``: dcmtk ``storescp +B`` (bit-preserving, no fsync, TCP_NODELAY=1, same maximum
  PDU), the fastest way to take the bytes off the network.

Every receiver is fresh for every measurement (so every image is really stored); the ratios
are taken within each round and their medians printed, since the machine's speed swings.

    python bench/bench_ingest.py --compare --images 60 --rounds 3
    python bench/bench_ingest.py --host 127.0.0.1 --port 11112 --aet FRACTUREGW --images 60

Run by hand; results go to docs/PERFORMANCE.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROWS, COLUMNS = 2560, 2048  # 2 bytes per pixel: 10.5 MB of pixel data
MAX_PDU = 65536
REPO_ROOT = Path(__file__).resolve().parents[1]
DISK, GATEWAY, ORTHANC, STORESCP = "disk", "fracture-gateway", "Orthanc", "storescp"


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


def wait_port(
    port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 300.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the receiver for port {port} exited ({process.returncode})")
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


def disk_rate(folder: Path, paths: list[Path]) -> float:
    """Files/s writing and fsyncing one file of each image's size after the other."""
    data = [os.urandom(p.stat().st_size) for p in paths[:2]]
    folder.mkdir()
    os.sync()
    start = time.perf_counter()
    for i, path in enumerate(paths):
        fd = os.open(folder / path.name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        try:
            os.write(fd, data[i % len(data)])
            os.fsync(fd)
        finally:
            os.close(fd)
    return len(paths) / (time.perf_counter() - start)


@contextlib.contextmanager
def gateway(work: Path) -> Iterator[tuple[int, str]]:
    """The full service, durable, on fresh storage: DICOM node, API, worker, model loaded."""
    port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "FRACTURE_GATEWAY_HOME": str(work / "gateway-home"),
        "FRACTURE_GATEWAY_NODE__BIND_ADDRESS": "127.0.0.1",
        "FRACTURE_GATEWAY_NODE__PORT": str(port),
        "FRACTURE_GATEWAY_NODE__MAXIMUM_PDU_SIZE": str(MAX_PDU),
        "FRACTURE_GATEWAY_NODE__DUPLICATE_POLICY": "keep_first",
        "FRACTURE_GATEWAY_API__PORT": str(api_port),
        "FRACTURE_GATEWAY_LOG_LEVEL": "WARNING",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)  # the model is loaded before the DICOM node starts
        wait_port(api_port, proc)
        yield port, "FRACTUREGW"
    finally:
        proc.terminate()
        proc.wait(60)


@contextlib.contextmanager
def storescp(work: Path) -> Iterator[tuple[int, str]]:
    out = work / "storescp-out"
    out.mkdir()
    program = shutil.which("storescp")
    if program is None:
        raise SystemExit("storescp (dcmtk) is needed")
    port = free_port()
    proc = subprocess.Popen(
        # +B (bit-preserving): write the received bytes as they are, storescp's fastest mode.
        [program, "+B", "--max-pdu", str(MAX_PDU), "--output-directory", str(out), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_port(port, proc)
        yield port, "ANY-SCP"
    finally:
        proc.terminate()
        proc.wait(60)


@contextlib.contextmanager
def orthanc(work: Path) -> Iterator[tuple[int, str]]:
    """Orthanc with its defaults (``SyncStorageArea``: fsync of every file), fresh storage."""
    sys.path.insert(0, str(REPO_ROOT))  # the Orthanc helper lives with the tests
    from tests.helpers.orthanc import run_orthanc

    with run_orthanc(work / "orthanc") as server:
        yield server.dicom_port, server.ae_title


RECEIVERS: dict[str, Callable[[Path], contextlib.AbstractContextManager[tuple[int, str]]]] = {
    GATEWAY: gateway,
    ORTHANC: orthanc,
    STORESCP: storescp,
}


def measure(case: str, work: Path, paths: list[Path], associations: int) -> float:
    """One fresh measurement of ``case``: images (or files) per second."""
    if case == DISK:
        return disk_rate(work / "disk", paths)
    with RECEIVERS[case](work) as (port, aet):
        return len(paths) / send(paths, "127.0.0.1", port, aet, associations)


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds of each round's ratio (both measured in the same round)."""
    return statistics.median(o / t for o, t in zip(ours, theirs, strict=True))


def compare(work: Path, paths: list[Path], counts: list[int], rounds: int) -> None:
    cases = [DISK, GATEWAY, ORTHANC, STORESCP]
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    rates: dict[tuple[str, int], list[float]] = {}
    for round_number in range(rounds):
        order = cases[round_number % len(cases) :] + cases[: round_number % len(cases)]
        for n in counts:
            for case in order:
                folder = work / f"{case}-{n}-{round_number}"
                folder.mkdir()
                rate = measure(case, folder, paths, n)
                shutil.rmtree(folder, ignore_errors=True)
                rates.setdefault((case, n), []).append(rate)
                print(
                    f"round {round_number + 1} {n} assoc {case:<17} {rate:6.1f} images/s"
                    f" {rate * size_mb / len(paths):7.1f} MB/s",
                    flush=True,
                )
    print(f"\nmedians over {rounds} rounds (ratios: median of each round's ratio):")
    for n in counts:
        ours = rates[(GATEWAY, n)]
        line = ", ".join(f"{c} {statistics.median(rates[(c, n)]):.1f}" for c in cases)
        ratios = ", ".join(
            f"/{c} {median_ratio(ours, rates[(c, n)]):.2f}x" for c in (DISK, ORTHANC, STORESCP)
        )
        print(f"{n} assoc: {line} images/s; fracture-gateway {ratios}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--aet", default="FRACTUREGW")
    parser.add_argument("--compare", action="store_true", help="disk, gateway, Orthanc, storescp")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (--compare)")
    parser.add_argument(
        "--folder", type=Path, help="where the images and the receivers' storage go (a temp dir)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=args.folder) as tmp:
        work = Path(tmp)
        images = work / "images"
        images.mkdir()
        paths = make_images(images, args.images)
        print(
            f"{len(paths)} images of {paths[0].stat().st_size / 1e6:.1f} MB; "
            f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
            flush=True,
        )
        if args.compare:
            compare(work, paths, args.associations, args.rounds)
            return
        if args.port is None:
            parser.error("--port is required without --compare")
        for n in args.associations:
            seconds = send(paths, args.host, args.port, args.aet, n)
            print(f"{n} assoc: {len(paths) / seconds:.1f} images/s", flush=True)


if __name__ == "__main__":
    main()

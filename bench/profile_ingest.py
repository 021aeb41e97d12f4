"""Where a durable C-STORE's time goes in our SCP (run by hand, next to bench_ingest.py).

Runs the node in this process on a temporary home, wraps the C-STORE's phases with timers,
sends N synthetic 10 MB 16-bit DX images with dcmtk ``storescu`` over one association (maximum
PDU 64 KiB, as bench_ingest.py), and prints per-image medians and the receiving process's CPU
time per image. Round 1 stores new instances; round 2 resends the same ones, which are
answered as identical duplicates (the temporary file is still written and fsynced, but
nothing is renamed or inserted).

    python bench/profile_ingest.py --images 40

Phases: ``receive`` runs from the command set to the last fragment (the data set is written
to the temporary file meanwhile); the handler then parses the header, waits for the rest of
the file to be written and fsynced, renames it into place (folder fsynced) and records it in
one transaction. ``network + protocol`` is the time per image not spent in the handler:
receiving the PDUs, the response and storescu's own work.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import MAX_PDU, free_port, make_images

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMES[label].append(time.perf_counter() - start)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()
    storescu = shutil.which("storescu")
    if storescu is None:
        raise SystemExit("storescu (dcmtk) is needed")
    with tempfile.TemporaryDirectory(prefix="profile-ingest-") as tmp:
        work = Path(tmp)
        (work / "images").mkdir()
        paths = make_images(work / "images", args.images)
        port = free_port()
        os.environ.update(
            FRACTURE_GATEWAY_HOME=str(work / "home"),
            FRACTURE_GATEWAY_NODE__BIND_ADDRESS="127.0.0.1",
            FRACTURE_GATEWAY_NODE__PORT=str(port),
            FRACTURE_GATEWAY_NODE__MAXIMUM_PDU_SIZE=str(MAX_PDU),
            FRACTURE_GATEWAY_INFERENCE__ENABLED="false",
            FRACTURE_GATEWAY_GROUPING__QUIET_PERIOD_S="3600",
        )
        import dicom_node.ingest as ingest
        import dicom_node.scp as scp
        from config.settings import Settings
        from dicom_node.receiving import IncomingDataSet, ReceivedDataSet
        from dicom_node.storage import InstanceStore
        from gateway.service import Service

        opened = IncomingDataSet.__init__

        def open_timed(self: IncomingDataSet, *args: Any, **kwargs: Any) -> None:
            self.opened_at = time.perf_counter()  # type: ignore[attr-defined]
            opened(self, *args, **kwargs)

        finish = IncomingDataSet.finish

        def finish_timed(self: IncomingDataSet) -> ReceivedDataSet:
            TIMES["receive"].append(time.perf_counter() - self.opened_at)  # type: ignore[attr-defined]
            return finish(self)

        IncomingDataSet.__init__ = open_timed  # type: ignore[method-assign]
        IncomingDataSet.finish = finish_timed  # type: ignore[method-assign]
        scp.ingest_received = timed("handler", scp.ingest_received)  # type: ignore[assignment]
        ingest.parse_received_header = timed(  # type: ignore[assignment]
            "parse header", ingest.parse_received_header
        )
        ReceivedDataSet.durable = timed(  # type: ignore[method-assign]
            "wait for write + fsync", ReceivedDataSet.durable
        )
        InstanceStore.place = timed("rename + folder fsync", InstanceStore.place)  # type: ignore[method-assign]
        ingest._record = timed("database transaction", ingest._record)  # type: ignore[assignment]

        service = Service(Settings())
        service.start(worker=False)
        try:
            for label in ("new instances", "identical resends"):
                TIMES.clear()
                os.sync()
                cpu_start = time.process_time()
                start = time.perf_counter()
                subprocess.run(
                    [storescu, "-aet", "PROFILE", "-aec", "FRACTUREGW", "--max-pdu", str(MAX_PDU)]
                    + ["127.0.0.1", str(port)]
                    + [str(p) for p in paths],
                    check=True,
                    capture_output=True,
                )
                per_image = (time.perf_counter() - start) / len(paths) * 1000
                cpu = (time.process_time() - cpu_start) / len(paths) * 1000
                phases = {k: statistics.median(v) * 1000 for k, v in TIMES.items()}
                print(
                    f"{label}: {1000 / per_image:.1f} images/s, {per_image:.1f} ms per image, "
                    f"receiver CPU {cpu:.1f} ms per image"
                )
                for name, ms in phases.items():
                    print(f"  {name:<26} {ms:6.1f} ms (median)")
                print(f"  {'network + protocol':<26} {per_image - phases['handler']:6.1f} ms")
        finally:
            service.stop()


if __name__ == "__main__":
    main()

"""A DICOM node in a process of its own, so a test can read that process's memory use.

Run as ``python -m tests.helpers.node_process HOME SETTINGS_JSON``: it starts the SCP with
:func:`tests.helpers.node.make_settings` and the JSON overrides, prints ``PORT <n>`` once it
listens, and stops when its standard input is closed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.tools import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class NodeProcess:
    """A running node process: its pid and DICOM port, and its memory counters from /proc."""

    pid: int
    port: int

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise KeyError(field)

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS)."""
        return self._status_kib("VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        """The highest resident set size since start or :meth:`reset_peak` (VmHWM)."""
        return self._status_kib("VmHWM") * 1024

    def reset_peak(self) -> None:
        """Set VmHWM back to the current RSS (proc(5), ``clear_refs`` value 5)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")


@contextmanager
def node_process(home: Path, **overrides: Any) -> Iterator[NodeProcess]:
    """Start a node in a child process; stop it on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.node_process", str(home), json.dumps(overrides)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"node process did not start (exit code {process.poll()})")
        yield NodeProcess(process.pid, int(line.split()[1]))
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            stop_process(process)


def _main() -> None:
    from gateway.service import Service
    from tests.helpers.node import make_settings

    home, overrides = Path(sys.argv[1]), json.loads(sys.argv[2])
    service = Service(make_settings(home, **overrides))
    service.start(dicom=True, worker=False)
    try:
        print(f"PORT {service.dicom_port}", flush=True)
        sys.stdin.read()  # until the test closes our standard input
    finally:
        service.stop()


if __name__ == "__main__":
    _main()

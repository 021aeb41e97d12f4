"""Run Python code in a fresh interpreter from the checkout (what a test must not share)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_fresh(code: str, *args: str, timeout_s: float = 120) -> str:
    """Standard output of ``python -c code args`` in a new process; fails on a non-zero exit."""
    child = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    return child.stdout

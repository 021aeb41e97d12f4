"""Run a fuzz target in a process of its own and say what became of it.

The fuzzer runs as a subprocess so that whatever it finds (an exception, a hang, a process that
aborts inside a C library, memory over the limit) ends that process and never the test run.
libFuzzer's exit status and its report name the finding; the input that caused it is the file
libFuzzer writes under ``-artifact_prefix``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class LibFuzzerExit(IntEnum):
    """libFuzzer's exit statuses (its ``-error_exitcode`` and ``-timeout_exitcode`` defaults)."""

    DONE = 0
    TIMEOUT = 70
    OUT_OF_MEMORY = 71
    CRASH = 77


class Finding(StrEnum):
    """What a fuzzing run found, from libFuzzer's SUMMARY line and the exit status."""

    NOTHING = "nothing"
    CRASH = "crash"  # an unexpected exception, or a deadly signal (abort, segfault)
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out-of-memory"
    OTHER = "other"  # the process ended some other way: see its output


_SUMMARY = re.compile(r"^SUMMARY: libFuzzer: (.+)$", re.MULTILINE)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class FuzzRun:
    """The end of one fuzzing run."""

    command: list[str]
    returncode: int
    output: str
    artifacts: tuple[Path, ...]

    @property
    def finding(self) -> Finding:
        if self.returncode == LibFuzzerExit.DONE:
            return Finding.NOTHING
        summary = _SUMMARY.search(self.output)
        text = summary.group(1) if summary else ""
        if "timeout" in text or self.returncode == LibFuzzerExit.TIMEOUT:
            return Finding.TIMEOUT
        if "out-of-memory" in text or self.returncode == LibFuzzerExit.OUT_OF_MEMORY:
            return Finding.OUT_OF_MEMORY
        if text or self.returncode == LibFuzzerExit.CRASH or self.returncode < 0:
            return Finding.CRASH
        return Finding.OTHER

    @property
    def stats(self) -> dict[str, int]:
        """libFuzzer's final statistics (``-print_final_stats=1``): runs, exec/s, peak RSS."""
        return {name: int(value) for name, value in _STAT.findall(self.output)}

    def replay_commands(self, module: str) -> list[str]:
        """Commands that run each kept input again, from the repository root."""
        return [f"python -m {module} {shlex.quote(str(path))}" for path in self.artifacts]


def run_fuzzer(
    module: str,
    corpus: Path,
    artifacts: Path,
    *,
    flags: list[str],
    deadline_s: float,
    tmp: Path,
) -> FuzzRun:
    """Run ``python -m module`` with libFuzzer ``flags`` on ``corpus``, at most ``deadline_s``.

    New inputs go to ``corpus``, findings to ``artifacts``; ``tmp`` is the process's
    ``TMPDIR``. A run still going at the deadline is killed and reported as what it is.
    """
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        module,
        *flags,
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    environment = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO_ROOT)}
    try:
        done = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=deadline_s,
            check=False,
        )
        returncode, output = done.returncode, done.stdout
    except subprocess.TimeoutExpired as expired:
        returncode = -9
        partial = expired.output
        text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial or ""
        output = f"{text}\n[killed after {deadline_s:.0f} s]"
    kept = tuple(sorted(p for p in artifacts.iterdir() if p.is_file()))
    return FuzzRun(command, returncode, output, kept)

"""Finding external programs and free ports; a missing program fails under CI, else skips."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest


def in_ci() -> bool:
    """Whether the tests run in CI, where a missing tool must fail rather than skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_program(name: str) -> str:
    """The path of an installed program; fails the test in CI, skips it elsewhere."""
    path = shutil.which(name) or (
        name if os.path.isabs(name) and os.access(name, os.X_OK) else None
    )
    if path is None:
        message = f"{name} is not installed"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    *,
    host: str = "127.0.0.1",
    timeout_s: float = 20.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate a process we started, killing it if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)

"""A fuzz target that fails on purpose, by its input's first byte: the runner's own test.

``C`` raises an exception, ``H`` hangs, ``M`` holds 600 MiB; anything else returns.
"""

from __future__ import annotations

import sys
import time

import atheris

HOLD_MIB = 600


def one_input(data: bytes) -> None:
    """Misbehave as the first byte says."""
    if data[:1] == b"C":
        raise KeyError("a crash on purpose")
    if data[:1] == b"H":
        time.sleep(60)
    if data[:1] == b"M":
        held = b"M" * (HOLD_MIB << 20)
        time.sleep(3)  # libFuzzer samples the resident size once a second
        del held


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()

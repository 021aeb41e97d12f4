"""When the node last received C-STORE data, so that background work can yield to a burst.

A PACS that sends a burst of radiographs should get each Success as fast as the disk allows.
Analysing the images of that burst at the same time (analysis on arrival) takes the same CPUs:
measured on two cores, it halved durable ingest (docs/PERFORMANCE.md). The DICOM node touches an
:class:`IngestActivity` for every P-DATA it receives; the in-process job executor asks it how
long to hold back before claiming its next job. It holds back while data arrives and for
``quiet_s`` after the last of it, but never for longer than ``max_yield_s`` into one busy
period: under sustained load the two share the CPUs again, so results never starve.

It is plain data read and written without a lock: a float assignment is atomic in CPython, and
a reader that sees a value one fragment old decides the same thing a few microseconds later.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class IngestActivity:
    """The start and the latest moment of the current burst of received data."""

    def __init__(
        self,
        quiet_s: float,
        max_yield_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if quiet_s < 0 or max_yield_s < 0:
            raise ValueError(
                f"quiet_s and max_yield_s must not be negative: {quiet_s!r}, {max_yield_s!r}"
            )
        self.quiet_s = quiet_s
        self.max_yield_s = max_yield_s
        self._clock = clock
        self._last = -float("inf")
        self._since = -float("inf")

    def touch(self) -> None:
        """Data arrived now (called for every P-DATA; a few hundred nanoseconds)."""
        now = self._clock()
        if now - self._last >= self.quiet_s:
            self._since = now  # a new busy period begins
        self._last = now

    def hold_back_s(self) -> float:
        """How long background work should wait before starting something new (0: go now)."""
        now = self._clock()
        quiet_in = self.quiet_s - (now - self._last)
        cap_in = self.max_yield_s - (now - self._since)
        if quiet_in <= 0 or cap_in <= 0:
            return 0.0
        return min(quiet_in, cap_in)


__all__ = ["IngestActivity"]

"""A decode task that never returns on images of a given height, like a codec in an endless loop.

In a module of its own, light to import: a decoding child imports it before it says it is ready.
Bind the height with :func:`functools.partial`, which pickles by reference like the function.
"""

from __future__ import annotations

import signal
import threading

from pydicom.dataset import Dataset

from inference.decode import DecodedImage, decode_frame


def hang_on_rows(rows: int, ds: Dataset, min_long_side: int | None) -> DecodedImage:
    """Never return on an image of ``rows`` rows, ignoring SIGTERM too (only a kill ends it);
    decode any other image."""
    if int(ds.Rows) == rows:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            threading.Event().wait()
    return decode_frame(ds, min_long_side)

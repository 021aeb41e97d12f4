"""JPEG Lossless inputs that make pylibjpeg-libjpeg leak, made from a real file.

``JPEG-LL.dcm`` (1024 x 256, 16 bits, Process 14 SV1) with an SOS marker written into the middle
of its entropy-coded data: the frame header, the length and EOI are intact, so every check before
decoding passes; libjpeg then refuses the stream and keeps about two decoded images of memory
(measured in :mod:`tests.inference.test_isolation` and ``bench/bench_decode_isolation.py``).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

#: The real JPEG Lossless file the inputs are made from, under the shared DICOM folder.
SOURCE = Path("pydicom-data/data_store/data/JPEG-LL.dcm")
_SOS = b"\xff\xda"
#: Where, after the start of the scan data, the stray marker is written.
_OFFSET = 100


def leaking_lossless(shared_dir: Path) -> Dataset:
    """The source file with a stray SOS marker in its scan data (T.81 B.2.3)."""
    ds = pydicom.dcmread(shared_dir / "dicom" / SOURCE)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    sos = frame.index(_SOS)
    scan = sos + 2 + int.from_bytes(frame[sos + 2 : sos + 4], "big")
    frame[scan + _OFFSET : scan + _OFFSET + 2] = _SOS
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


def intact_lossless(shared_dir: Path) -> Dataset:
    """The source file itself (decodes)."""
    return pydicom.dcmread(shared_dir / "dicom" / SOURCE)

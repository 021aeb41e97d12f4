"""The stored radiograph's values for the viewer's window/level, and the image's own window.

The preview PNG is already windowed: a reader who widens the window there finds nothing beyond
what the 8-bit picture kept. This module sends the values before the VOI step instead
(PS3.4 N.2.1.1: after the Modality LUT, PS3.3 C.11.1), quantised to 16 bits, with the window
the image itself asks for (C.11.2), so the page starts where the preview does and can go
anywhere from there.

Wire format (one response, ``application/octet-stream``)::

    uint32 little-endian  n, the length of the header
    n bytes               UTF-8 JSON header (see :class:`ViewerPixels.header`), space-padded
                          so that the values start on an even byte
    rows * columns        uint16 little-endian values, row by row: 0 is padding (shown
                          black), v >= 1 stands for the modality value offset + scale * (v - 1)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from api.pictures import PictureUnavailable
from inference.decode import MONOCHROME, decode_image
from inference.errors import NotAnalysable
from inference.pixels import (
    DEFAULT_WINDOW_PERCENTILES,
    VoiLutFunction,
    apply_modality,
    colour_to_grey,
    mask_unused_bits,
    needs_inversion,
    padding_mask,
)

#: The largest quantised value; 0 is padding.
_TOP = 65535


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window in modality units (PS3.3 C.11.2.1.2) and its function."""

    center: float
    width: float
    function: VoiLutFunction


@dataclass(frozen=True, slots=True)
class ViewerPixels:
    """Quantised modality values of the (possibly reduced) image and how to show them."""

    values: NDArray[np.uint16]
    offset: float
    scale: float
    window: Window
    invert: bool
    image_rows: int
    image_columns: int

    def header(self) -> dict[str, Any]:
        rows, columns = self.values.shape
        return {
            "rows": rows,
            "columns": columns,
            "image_rows": self.image_rows,
            "image_columns": self.image_columns,
            "offset": self.offset,
            "scale": self.scale,
            "window": {
                "center": self.window.center,
                "width": self.window.width,
                "function": self.window.function.value,
            },
            "invert": self.invert,
        }

    def encode(self) -> bytes:
        """The wire format of the module's description."""
        header = json.dumps(self.header(), separators=(",", ":")).encode()
        if (4 + len(header)) % 2:
            header += b" "
        return struct.pack("<I", len(header)) + header + self.values.astype("<u2").tobytes()


def _first(value: object) -> float:
    """The first value of a possibly multi-valued numeric attribute."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _lut_window(ds: Dataset) -> Window | None:
    """The input range over which the first VOI LUT rises: a linear window that spans it."""
    item = ds.VOILUTSequence[0]
    entries, first, _ = (int(v) for v in item.LUTDescriptor)
    data = item.LUTData
    if isinstance(data, bytes | bytearray):
        lut = np.frombuffer(data, dtype="<u2")[: entries or 65536].astype(np.float64)
    else:
        lut = np.asarray(list(data) if not isinstance(data, int) else [data], dtype=np.float64)
    if lut.size < 2 or lut.max() <= lut.min():
        return None
    rising = np.flatnonzero((lut > lut.min()) & (lut < lut.max()))
    if rising.size == 0:
        return None
    low, high = first + float(rising[0]) - 1.0, first + float(rising[-1]) + 1.0
    return Window((low + high) / 2.0, high - low, VoiLutFunction.LINEAR_EXACT)


def image_window(ds: Dataset, kept: NDArray[np.float64]) -> Window:
    """The window the image asks for, in modality units, as :func:`inference.pixels.apply_voi`.

    The first Window Center/Width with its function; for a VOI LUT the linear window over
    the LUT's rising part; else the default window (the stored range up to 8 bits, the 0.5 to
    99.5 percentiles of ``kept``, the non-padding values, above).
    """
    try:
        if ds.get("VOILUTSequence"):
            window = _lut_window(ds)
            if window is not None:
                return window
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            name = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
            known = name in set(VoiLutFunction)
            function = VoiLutFunction(name) if known else VoiLutFunction.LINEAR
            if np.isfinite(center) and np.isfinite(width) and width >= 1:
                return Window(center, width, function)
    except (TypeError, ValueError, AttributeError, IndexError):
        pass  # an unusable VOI: the default window, as the grey chain does
    bits_stored = int(ds.get("BitsStored", ds.BitsAllocated))
    if bits_stored <= 8 and int(ds.get("PixelRepresentation", 0)) == 0:
        ends = apply_modality(np.array([0, (1 << bits_stored) - 1], dtype=np.int64), ds)
        low, high = float(ends.min()), float(ends.max())
    elif kept.size:
        step = max(1, kept.size // 1_000_000)
        low, high = (float(p) for p in np.percentile(kept[::step], DEFAULT_WINDOW_PERCENTILES))
        if high <= low:
            low, high = float(kept.min()), float(kept.max())
    else:
        low, high = 0.0, 1.0
    high = max(high, low + 1e-6)
    return Window((low + high) / 2.0, high - low, VoiLutFunction.LINEAR_EXACT)


def viewer_pixels(ds: Dataset, max_size: int) -> ViewerPixels:
    """The image's modality values, long side at most ``max_size``, quantised to 16 bits.

    Colour images (rare among radiographs) are sent as their grey in ``[0, 1]``.

    Raises
    ------
    NotAnalysable
        When the pixels cannot be decoded (as for the preview).
    """
    decoded = decode_image(ds, min_long_side=max_size)
    image_rows, image_columns = int(ds.Rows), int(ds.Columns)
    padding: NDArray[np.bool_] | None = None
    if decoded.photometric in MONOCHROME:
        stored = mask_unused_bits(decoded.pixels, ds)
        padding = padding_mask(stored, ds)
        values = apply_modality(stored, ds)
        kept = values[~padding] if padding is not None else values.ravel()
        window = image_window(ds, kept)
        invert = needs_inversion(ds, decoded.photometric)
    else:
        values = colour_to_grey(decoded.pixels, ds, decoded.photometric)
        window = Window(0.5, 1.0, VoiLutFunction.LINEAR_EXACT)
        invert = False
    height, width = values.shape
    scale = min(1.0, max_size / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = cv2.resize(values.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        values = np.asarray(resized, dtype=np.float64)
        if padding is not None:
            padding = (
                cv2.resize(padding.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
            )
    real = values[~padding] if padding is not None else values.ravel()
    low = float(real.min()) if real.size else 0.0
    high = float(real.max()) if real.size else 0.0
    step = (high - low) / (_TOP - 1) if high > low else 1.0
    quantised = (1 + np.rint((values - low) / step)).clip(1, _TOP).astype(np.uint16)
    if padding is not None:
        quantised[padding] = 0
    return ViewerPixels(quantised, low, step, window, invert, image_rows, image_columns)


def viewer_pixels_of(path: Path, max_size: int) -> bytes:
    """The encoded viewer values of the stored image at ``path``."""
    try:
        return viewer_pixels(dcmread(path), max_size).encode()
    except NotAnalysable as exc:
        raise PictureUnavailable(f"the image cannot be shown ({exc.reason})") from exc
    except (OSError, InvalidDicomError, AttributeError, ValueError, TypeError) as exc:
        raise PictureUnavailable(f"the stored image cannot be read ({type(exc).__name__})") from exc

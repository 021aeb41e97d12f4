"""DICOM image -> grey radiograph in ``[0, 1]``, bone bright -> model input.

The grey conversion is a short chain of pure steps, each ``(ndarray, Dataset) -> ndarray`` and
none modifying its inputs, in the order of the grayscale pipeline of PS3.4 N.2.1.1:

1. :func:`mask_unused_bits`: keep the Bits Stored, sign-extend signed pixels (PS3.5 8.1.1).
2. :func:`padding_mask`: where Pixel Padding Value (+ Range Limit) says "no image" (C.7.5.1.1.2).
3. :func:`apply_modality`: Modality LUT or Rescale Slope/Intercept (PS3.3 C.11.1).
4. :func:`apply_voi`: VOI LUT Sequence, else the first window (C.11.2.1.2: LINEAR,
   LINEAR_EXACT, SIGMOID), else a default window, to ``[0, 1]``.
5. :func:`apply_presentation`: MONOCHROME1 (C.7.6.3.1.2) or Presentation LUT Shape INVERSE
   (C.11.6.1.2) inverted once, so bone is bright; padding set to black.

Colour images (RGB, YBR decoded to RGB) become grey with the BT.601 weights of
:func:`inference.picture.rgb_to_grey`, like the training pictures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, convert_color_space

from inference.decode import (
    DECODABLE_TRANSFER_SYNTAXES,
    MONOCHROME,
    DecodedImage,
    Photometric,
    check_analysable,
    decode_image,
    transfer_syntax_of,
)
from inference.errors import NotAnalysable, Reason
from inference.picture import rgb_to_grey
from inference.preprocess import FloatImage, PreparedImage, prepare

__all__ = [
    "DECODABLE_TRANSFER_SYNTAXES",
    "NotAnalysable",
    "VoiLutFunction",
    "WindowSample",
    "apply_modality",
    "apply_presentation",
    "apply_voi",
    "apply_window",
    "check_analysable",
    "colour_to_grey",
    "display_grey",
    "grey_from_pixels",
    "grey_lookup",
    "grey_stepwise",
    "mask_unused_bits",
    "needs_inversion",
    "padding_mask",
    "to_model_input",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Percentiles of the default window for images with more than 8 bits and no VOI.
DEFAULT_WINDOW_PERCENTILES = (0.5, 99.5)
#: The default window's percentiles are computed on at most this many pixels (a regular subsample).
_PERCENTILE_SAMPLE = 1_000_000
#: Deeper integer pixels are converted step by step instead of through a look-up table.
_LOOKUP_MAX_BITS = 16


class VoiLutFunction(StrEnum):
    """VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


def _bits(ds: Dataset) -> tuple[int, int, bool]:
    """Bits Allocated, Bits Stored and whether pixels are signed."""
    allocated = int(ds.BitsAllocated)
    stored = int(ds.get("BitsStored", allocated))
    return allocated, stored, int(ds.get("PixelRepresentation", 0)) == 1


def _fix_bits(values: NDArray[np.int64], bits_stored: int, signed: bool) -> NDArray[np.int64]:
    """Keep the low ``bits_stored`` bits; sign-extend them when ``signed``."""
    low = values & ((1 << bits_stored) - 1)
    if signed:
        sign = 1 << (bits_stored - 1)
        return (low ^ sign) - sign
    return low


def mask_unused_bits(arr: NDArray[np.generic], ds: Dataset) -> NDArray[np.int64]:
    """Stored pixel values: the high bits beyond Bits Stored cleared, signed values extended.

    PS3.5 8.1.1: bits above the High Bit carry nothing (overlays in old files, noise). Works on
    a copy; the dtype of the result is ``int64`` so later arithmetic cannot overflow.
    """
    _, bits_stored, signed = _bits(ds)
    return _fix_bits(np.asarray(arr).astype(np.int64), bits_stored, signed)


def _padding_values(ds: Dataset) -> tuple[int, int] | None:
    """The inclusive range of stored values that are padding, or ``None`` (C.7.5.1.1.2)."""
    value = ds.get("PixelPaddingValue")
    if value is None or value == b"":
        return None
    _, bits_stored, signed = _bits(ds)
    limit = ds.get("PixelPaddingRangeLimit", value)
    try:
        first, second = (
            int(_fix_bits(np.array([int(v)], dtype=np.int64), bits_stored, signed)[0])
            for v in (value, limit)
        )
    except (TypeError, ValueError):  # an unreadable value (e.g. raw bytes of unknown VR)
        return None
    return min(first, second), max(first, second)


def padding_mask(arr: NDArray[np.generic], ds: Dataset) -> BoolArray | None:
    """Where the stored values ``arr`` are Pixel Padding (PS3.3 C.7.5.1.1.2), or ``None``.

    ``arr`` holds stored values (after :func:`mask_unused_bits`). Padding is a single value, or
    with Pixel Padding Range Limit the inclusive range between the two.
    """
    limits = _padding_values(ds)
    if limits is None:
        return None
    low, high = limits
    stored = np.asarray(arr, dtype=np.int64)
    mask: BoolArray = (stored >= low) & (stored <= high)
    return mask if bool(mask.any()) else None


def apply_modality(arr: NDArray[np.generic], ds: Dataset) -> FloatArray:
    """Modality LUT or Rescale Slope/Intercept (PS3.3 C.11.1), as float64.

    Raises
    ------
    NotAnalysable
        ``invalid_lut`` when the Modality LUT Sequence cannot be applied.
    """
    try:
        out = apply_modality_lut(arr, ds)
    # KeyError: pydicom indexes the item by tag, so an item without LUT Data raises it
    except (
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        KeyError,
        NotImplementedError,
    ) as exc:
        raise NotAnalysable(Reason.INVALID_LUT, "the Modality LUT cannot be applied") from exc
    return np.asarray(out, dtype=np.float64)


def _first(value: object) -> float:
    """The first value of a possibly multi-valued numeric attribute."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def apply_window(
    values: FloatArray, center: float, width: float, function: VoiLutFunction
) -> FloatArray:
    """Window ``values`` to ``[0, 1]`` (PS3.3 C.11.2.1.2.1, C.11.2.1.3.1 and .2).

    Raises
    ------
    ValueError
        If the width is not valid for the function (LINEAR needs >= 1, the others > 0).
    """
    if function is VoiLutFunction.LINEAR:
        if width < 1:
            raise ValueError(f"a LINEAR window needs a width of at least 1, got {width}")
        if width == 1:
            return (values > center - 0.5).astype(np.float64)
        out = (values - (center - 0.5)) / (width - 1) + 0.5
    elif function is VoiLutFunction.LINEAR_EXACT:
        if width <= 0:
            raise ValueError(f"a LINEAR_EXACT window needs a positive width, got {width}")
        out = (values - center) / width + 0.5
    else:
        if width <= 0:
            raise ValueError(f"a SIGMOID window needs a positive width, got {width}")
        out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700.0, 700.0)))
    return np.clip(out, 0.0, 1.0)


def _lut_data(item: Dataset, ds: Dataset, entries: int) -> FloatArray:
    """LUT Data (0028,3006) as numbers, whether read as US values or OW bytes."""
    data = item.LUTData
    if isinstance(data, bytes | bytearray):
        big_endian = transfer_syntax_of(ds) == "1.2.840.10008.1.2.2"
        raw = np.frombuffer(data, dtype=">u2" if big_endian else "<u2")
        return raw[:entries].astype(np.float64)
    if isinstance(data, int):
        data = [data]
    return np.asarray(list(data), dtype=np.float64)


def _apply_voi_lut_item(values: FloatArray, item: Dataset, ds: Dataset) -> FloatArray:
    """Map through one VOI LUT Sequence item to ``[0, 1]`` (PS3.3 C.11.2.1.1).

    The output is scaled by ``2**n - 1`` where ``n`` is the LUT Descriptor's bits per entry,
    unless the LUT Data never exceed a smaller number of bits (a descriptor declaring 16 bits
    for 12-bit data is common); then that smaller ``n`` (at least 8) is used.
    """
    entries, first, nominal_bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    if first > 32767 and int(ds.get("PixelRepresentation", 0)) == 1:
        first -= 65536  # the first mapped value is signed for signed pixels (C.11.2.1.1)
    lut = _lut_data(item, ds, entries)
    if lut.size == 0:
        raise ValueError("empty LUT Data")
    largest = int(lut.max())
    bits = min(nominal_bits, max(8, largest.bit_length())) if largest > 0 else nominal_bits
    index = np.clip(np.rint(values) - first, 0, lut.size - 1).astype(np.intp)
    out: FloatArray = np.clip(lut[index] / float((1 << bits) - 1), 0.0, 1.0)
    return out


@dataclass(frozen=True, slots=True)
class WindowSample:
    """The values the default window's statistics come from: the non-padding pixels.

    Evaluated only when the default window is used: ``count()`` is how many there are,
    ``strided()`` every :func:`_percentile_step`-th of them in raster order, ``extremes()`` the
    minimum and maximum of all of them (needed only when the two percentiles coincide).
    """

    count: Callable[[], int]
    strided: Callable[[], FloatArray]
    extremes: Callable[[], tuple[float, float]]

    @classmethod
    def of(cls, kept: FloatArray) -> WindowSample:
        """The sample of ``kept``, the non-padding values in raster order."""
        return cls(
            lambda: kept.size,
            lambda: kept[:: _percentile_step(kept.size)],
            lambda: (float(kept.min()), float(kept.max())),
        )


def _percentile_step(size: int) -> int:
    return max(1, size // _PERCENTILE_SAMPLE)


def _default_window(values: FloatArray, ds: Dataset, sample: WindowSample) -> FloatArray:
    """The window used when the dataset has none, to ``[0, 1]``.

    Up to 8 bits stored the data are display values already (secondary captures, digitised
    film, the training pictures), so the full stored range is shown, as the picture path does.
    Deeper data get a robust window from the 0.5 and 99.5 percentiles of ``sample``.
    """
    _, bits_stored, signed = _bits(ds)
    if bits_stored <= 8:
        low_stored = -(1 << (bits_stored - 1)) if signed else 0
        high_stored = low_stored + (1 << bits_stored) - 1
        ends = apply_modality(np.array([low_stored, high_stored], dtype=np.int64), ds)
        low, high = float(ends.min()), float(ends.max())
    else:
        if sample.count() == 0:
            return np.zeros_like(values)
        low, high = (float(p) for p in np.percentile(sample.strided(), DEFAULT_WINDOW_PERCENTILES))
        if high <= low:
            low, high = sample.extremes()
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def apply_voi(
    values: FloatArray,
    ds: Dataset,
    *,
    exclude: BoolArray | None = None,
    sample: WindowSample | None = None,
) -> FloatArray:
    """VOI transformation of modality values to ``[0, 1]`` (PS3.3 C.11.2).

    The first item of the VOI LUT Sequence if there is one, else the first Window Center /
    Width with its VOI LUT Function (LINEAR when absent or unknown), else the default window
    (:func:`_default_window`). A window with an invalid width counts as absent. ``exclude``
    marks pixels (padding) left out of the default window's statistics; ``sample``, when
    given, holds the values those statistics come from instead (see :func:`grey_lookup`).
    """
    sequence = ds.get("VOILUTSequence")
    if sequence:
        try:
            return _apply_voi_lut_item(values, sequence[0], ds)
        except (TypeError, ValueError, AttributeError) as exc:
            raise NotAnalysable(Reason.INVALID_LUT, "the VOI LUT cannot be applied") from exc
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            center = width = float("nan")
        name = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
        function = VoiLutFunction(name) if name in set(VoiLutFunction) else VoiLutFunction.LINEAR
        if np.isfinite(center) and np.isfinite(width):
            try:
                return apply_window(values, center, width, function)
            except ValueError:
                pass  # an invalid width: fall back to the default window, as if absent
    if sample is None:
        kept = values[~exclude] if exclude is not None else values.ravel()
        sample = WindowSample.of(kept)
    return _default_window(values, ds, sample)


def needs_inversion(ds: Dataset, photometric: str | None = None) -> bool:
    """Whether the displayed grey must be inverted for bone to be bright.

    MONOCHROME1 means the minimum value is shown white (PS3.3 C.7.6.3.1.2); Presentation LUT
    Shape INVERSE says the same thing in the image (C.11.6.1.2; the DX IOD requires INVERSE
    exactly when MONOCHROME1, C.8.11.1.1.1). Either is one inversion, never two.
    """
    photometric = photometric or str(ds.get("PhotometricInterpretation", "")).strip()
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    return photometric == Photometric.MONOCHROME1 or shape == "INVERSE"


def apply_presentation(grey: FloatArray, ds: Dataset) -> FloatArray:
    """Invert VOI output where :func:`needs_inversion` says so; values stay in ``[0, 1]``."""
    return 1.0 - grey if needs_inversion(ds) else grey.copy()


def colour_to_grey(arr: NDArray[np.generic], ds: Dataset, photometric: str) -> FloatArray:
    """RGB (or YBR_FULL*, converted to RGB first) to grey in ``[0, 1]`` with BT.601 weights."""
    if photometric in (Photometric.YBR_FULL, Photometric.YBR_FULL_422):
        arr = convert_color_space(np.asarray(arr), photometric, "RGB")
    elif photometric != Photometric.RGB:
        raise NotAnalysable(
            Reason.UNSUPPORTED_PHOTOMETRIC, f"colour decoded as {photometric} is not supported"
        )
    _, bits_stored, _ = _bits(ds)
    top = float((1 << bits_stored) - 1)
    return np.clip(rgb_to_grey(np.asarray(arr)) / top, 0.0, 1.0)


def grey_from_pixels(
    arr: NDArray[np.generic], ds: Dataset, *, photometric: str | None = None
) -> FloatImage:
    """The whole grey chain: decoded pixels -> float32 ``[0, 1]``, bone bright, padding black.

    Integer pixels of up to 16 bits stored (every radiograph in practice) go through
    :func:`grey_lookup`, which gives the same values as the step-by-step chain at a fraction of
    its cost; anything else runs the steps on the whole array.

    Parameters
    ----------
    arr:
        Decoded pixels, ``rows x columns`` or ``rows x columns x 3``; not modified.
    ds:
        The dataset the pixels come from (its Image Pixel, Modality LUT, VOI LUT and
        Presentation attributes).
    photometric:
        The Photometric Interpretation of ``arr`` if the decoder changed it (YBR -> RGB).
    """
    photometric = photometric or str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in MONOCHROME:
        return colour_to_grey(arr, ds, photometric).astype(np.float32)
    arr = np.asarray(arr)
    if np.issubdtype(arr.dtype, np.integer) and _bits(ds)[1] <= _LOOKUP_MAX_BITS:
        return grey_lookup(cast(NDArray[np.integer], arr), ds)
    return grey_stepwise(arr, ds)


def grey_stepwise(arr: NDArray[np.generic], ds: Dataset) -> FloatImage:
    """The grey chain of a MONOCHROME image, each step applied to the whole array in turn."""
    stored = mask_unused_bits(arr, ds)
    padding = padding_mask(stored, ds)
    values = apply_modality(stored, ds)
    grey = apply_presentation(apply_voi(values, ds, exclude=padding), ds)
    if padding is not None:
        grey[padding] = 0.0
    return np.clip(grey, 0.0, 1.0).astype(np.float32)


def grey_lookup(arr: NDArray[np.integer], ds: Dataset) -> FloatImage:
    """The grey chain of a MONOCHROME integer image as one table look-up per pixel.

    Every step of :func:`grey_stepwise` maps each stored value on its own (bit masking, padding,
    Modality LUT, VOI LUT or window, inversion), so the chain is evaluated once for each of the
    ``2**BitsStored`` possible stored values and the pixels index that table. The one input
    that depends on the whole image, the default window's percentiles, is computed from the
    image's own non-padding values in the same order as the stepwise chain takes them, so the
    result is the same to the last bit.
    """
    _, bits_stored, signed = _bits(ds)
    index = _stored_index(arr, bits_stored, signed)
    low = -(1 << (bits_stored - 1)) if signed else 0
    domain = np.arange(low, low + (1 << bits_stored), dtype=np.int64)
    values = apply_modality(domain, ds)
    padding = padding_mask(domain, ds)
    sample = _lookup_sample(values, index, padding)
    table = apply_presentation(apply_voi(values, ds, sample=sample), ds)
    if padding is not None:
        table[padding] = 0.0
    table32 = np.clip(table, 0.0, 1.0).astype(np.float32)
    # np.take on a flat table is the same gather as fancy indexing, about twice as fast.
    grey: FloatImage = np.take(table32, index)
    return grey


def _stored_index(
    arr: NDArray[np.integer], bits_stored: int, signed: bool
) -> NDArray[np.unsignedinteger]:
    """Each pixel's stored value minus the smallest possible one: its row in the look-up table.

    The low ``bits_stored`` bits of the raw pixel, with the sign bit flipped for signed pixels
    (two's complement ``v - (-2**(n-1))`` is ``v`` with its sign bit flipped), computed on the
    unsigned view of the data in the narrowest unsigned type that holds ``bits_stored`` bits:
    ``np.take`` gathers through a 16-bit index about twice as fast as through a 32-bit one.
    """
    raw = arr.view(arr.dtype.str.replace("i", "u")) if arr.dtype.kind == "i" else arr
    dtype = np.uint8 if bits_stored <= 8 else np.uint16 if bits_stored <= 16 else np.uint32
    index: NDArray[np.unsignedinteger] = np.bitwise_and(raw, (1 << bits_stored) - 1, dtype=dtype)
    if signed:
        index ^= dtype(1 << (bits_stored - 1))
    return index


def _lookup_sample(
    values: FloatArray, index: NDArray[np.unsignedinteger], padding: BoolArray | None
) -> WindowSample:
    """The default window's sample for :func:`grey_lookup`: the stepwise chain's values, exactly.

    ``values`` is the table of modality values, ``index`` each pixel's table row and ``padding``
    the rows that are padding. Nothing is gathered unless the default window is used.
    """

    @cache
    def kept() -> NDArray[np.unsignedinteger]:
        """Table rows of the non-padding pixels, in raster order."""
        return index[~padding[index]] if padding is not None else index.ravel()

    def strided() -> FloatArray:
        rows = kept()
        sample: FloatArray = values[rows[:: _percentile_step(rows.size)]]
        return sample

    def extremes() -> tuple[float, float]:
        used = np.flatnonzero(np.bincount(kept(), minlength=values.size))
        return float(values[used].min()), float(values[used].max())

    return WindowSample(lambda: kept().size, strided, extremes)


def to_model_input(
    ds: Dataset, size: int, *, crop: bool = True, reduce: bool = True
) -> PreparedImage:
    """Check, decode and convert ``ds``, then :func:`inference.preprocess.prepare` it.

    With ``reduce`` a JPEG 2000 frame is decoded at the smallest resolution level with at
    least ``2 * size`` pixels on its long side. The returned transform always maps to the
    original Rows x Columns grid.

    Raises
    ------
    NotAnalysable
        For any image the pipeline refuses (see :func:`inference.decode.check_analysable`).
    """
    decoded = decode_image(ds, min_long_side=2 * size if reduce else None)
    grey = grey_from_pixels(decoded.pixels, ds, photometric=decoded.photometric)
    prepared = prepare(grey, size, crop=crop)
    if decoded.reduction == 0:
        return prepared
    transform = prepared.transform.rescaled_to(int(ds.Columns), int(ds.Rows), decoded.factor)
    return PreparedImage(tensor=prepared.tensor, transform=transform)


def display_grey(ds: Dataset, max_size: int | None = None) -> FloatImage:
    """The image as people see it, through the model's grey chain: float32 ``[0, 1]``.

    Full resolution (Rows x Columns) unless ``max_size`` limits the long side; then the image
    is decoded at a reduced JPEG 2000 level where possible and resized with area averaging.
    """
    decoded: DecodedImage = decode_image(ds, min_long_side=max_size)
    grey = grey_from_pixels(decoded.pixels, ds, photometric=decoded.photometric)
    if max_size is None:
        return grey
    if max_size < 1:
        raise ValueError(f"max_size must be positive, got {max_size}")
    height, width = grey.shape
    scale = max_size / max(height, width)
    if scale >= 1.0:
        return grey
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = cv2.resize(grey, new_size, interpolation=cv2.INTER_AREA)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)

"""Reference-value tables and properties for the pure grey-conversion steps of inference.pixels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydicom.dataset import Dataset
from pydicom.pixels.processing import convert_color_space
from pydicom.sequence import Sequence

from inference.errors import NotAnalysable, Reason
from inference.pixels import (
    VoiLutFunction,
    apply_modality,
    apply_window,
    display_grey,
    grey_from_pixels,
    mask_unused_bits,
    needs_inversion,
    padding_mask,
)
from inference.preprocess import CropBox, GeometryTransform, decimation_factor, prepare
from tests.inference.dicom_factory import make_image


def row(*values: int, dtype: type = np.uint16) -> np.ndarray:
    return np.array([values], dtype=dtype)


def grey_of(ds: Dataset) -> list[float]:
    return [float(v) for v in display_grey(ds)[0]]


# -- MONOCHROME1 and Presentation LUT Shape (PS3.3 C.7.6.3.1.2, C.11.6.1.2) ------------------


@pytest.mark.parametrize(
    ("photometric", "shape", "expected"),
    [
        ("MONOCHROME2", None, [0.0, 0.2, 1.0]),
        ("MONOCHROME1", None, [1.0, 0.8, 0.0]),
        ("MONOCHROME2", "IDENTITY", [0.0, 0.2, 1.0]),
        ("MONOCHROME2", "INVERSE", [1.0, 0.8, 0.0]),
        # The DX IOD pairs MONOCHROME1 with INVERSE: one inversion, not two.
        ("MONOCHROME1", "INVERSE", [1.0, 0.8, 0.0]),
    ],
)
def test_inversion_table(photometric: str, shape: str | None, expected: list[float]) -> None:
    extra: dict[str, Any] = {"PresentationLUTShape": shape} if shape else {}
    ds = make_image(row(0, 51, 255, dtype=np.uint8), photometric=photometric, **extra)
    assert grey_of(ds) == pytest.approx(expected, abs=1e-6)


# -- VOI LUT Sequence (C.11.2.1.1) -------------------------------------------------------------


def voi_lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.add_new("LUTDescriptor", "US", descriptor)  # (0028,3002) is "US or SS": say which
    item.add_new("LUTData", "US", data)  # (0028,3006) is "US or OW"
    return item


@pytest.mark.parametrize(
    ("descriptor", "data", "pixels", "expected"),
    [
        # first mapped value 10: below it the first entry, beyond the end the last entry
        ([4, 10, 8], [0, 85, 170, 255], (8, 10, 11, 12, 13, 20), [0, 0, 1 / 3, 2 / 3, 1, 1]),
        # 16 bits declared, 12-bit data: scaled by 4095 (the data's own depth)
        ([3, 0, 16], [0, 2048, 4095], (0, 1, 2), [0, 2048 / 4095, 1]),
        # a real 16-bit LUT stays scaled by 65535
        ([2, 0, 16], [0, 65535], (0, 1), [0, 1]),
    ],
)
def test_voi_lut_sequence_table(
    descriptor: list[int], data: list[int], pixels: tuple[int, ...], expected: list[float]
) -> None:
    ds = make_image(
        row(*pixels),
        bits_stored=12,
        VOILUTSequence=[voi_lut_item(descriptor, data)],
        WindowCenter=1,  # the sequence wins over a window
        WindowWidth=1,
    )
    assert grey_of(ds) == pytest.approx(expected, abs=1e-6)


# -- Windows (C.11.2.1.2.1, C.11.2.1.3) --------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "center", "width", "pixels", "expected"),
    [
        ("LINEAR", 100, 51, (74, 75, 100, 124, 125), [0, 0.01, 0.51, 0.99, 1]),
        ("LINEAR_EXACT", 100, 50, (70, 75, 100, 110, 125, 130), [0, 0, 0.5, 0.7, 1, 1]),
        (
            "SIGMOID",
            100,
            50,
            (75, 100, 125),
            [1 / (1 + math.exp(2)), 0.5, 1 / (1 + math.exp(-2))],
        ),
        (None, 128, 256, (0, 51, 255), [0, 0.2, 1]),  # LINEAR by default; 8-bit full range
    ],
)
def test_window_table(
    function: str | None,
    center: float,
    width: float,
    pixels: tuple[int, ...],
    expected: list[float],
) -> None:
    extra: dict[str, Any] = {"VOILUTFunction": function} if function else {}
    ds = make_image(
        row(*pixels), bits_stored=12, WindowCenter=[center, 9999], WindowWidth=[width, 1], **extra
    )
    assert grey_of(ds) == pytest.approx(expected, abs=1e-6)


def test_invalid_window_width_falls_back_to_the_default_window() -> None:
    ds = make_image(row(0, 1000, 2000, 3000), bits_stored=12, WindowCenter=100, WindowWidth=0)
    grey = grey_of(ds)
    assert grey[0] == 0.0
    assert grey[-1] == 1.0


# -- Modality LUT: rescale (C.11.1), signed pixels, Bits Stored ---------------------------------


def test_rescale_slope_intercept_table() -> None:
    # modality values -100, 100, 300; LINEAR_EXACT window [ -100, 300 ]
    ds = make_image(
        row(0, 100, 200),
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-100,
        RescaleType="US",
        WindowCenter=100,
        WindowWidth=400,
        VOILUTFunction="LINEAR_EXACT",
    )
    assert grey_of(ds) == pytest.approx([0.0, 0.5, 1.0], abs=1e-6)


def test_signed_pixels_table() -> None:
    ds = make_image(
        row(-1000, 0, 1000, dtype=np.int16),
        WindowCenter=0,
        WindowWidth=2000,
        VOILUTFunction="LINEAR_EXACT",
    )
    assert grey_of(ds) == pytest.approx([0.0, 0.5, 1.0], abs=1e-6)


@pytest.mark.parametrize(
    "item",
    [
        {"LUTDescriptor": [256, 0, 16]},  # no LUT Data
        {"LUTData": [0, 1, 2]},  # no LUT Descriptor
        {},  # an empty item
    ],
    ids=["no-data", "no-descriptor", "empty"],
)
def test_an_incomplete_modality_lut_is_refused_as_invalid_lut(item: dict[str, object]) -> None:
    lut = Dataset()
    for keyword, value in item.items():
        setattr(lut, keyword, value)
    ds = make_image(row(0, 1, 2), bits_stored=12)
    ds.ModalityLUTSequence = Sequence([lut])
    with pytest.raises(NotAnalysable) as caught:
        apply_modality(ds.pixel_array, ds)
    assert caught.value.reason == Reason.INVALID_LUT


@pytest.mark.parametrize(
    ("signed", "stored", "expected"),
    [
        (False, (0x1005, 0xF000 | 4095, 0x0800), [5, 4095, 2048]),
        (True, (0x0800, 0x0FFF, 0x07FF, 0xF001), [-2048, -1, 2047, 1]),
    ],
)
def test_bits_stored_masking_table(
    signed: bool, stored: tuple[int, ...], expected: list[int]
) -> None:
    ds = Dataset()
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, int(signed)
    assert mask_unused_bits(row(*stored), ds).tolist() == [expected]


def test_high_bits_do_not_reach_the_grey_image() -> None:
    clean = make_image(row(0, 2048, 4095), bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    dirty = make_image(
        row(0xF000, 0x1000 | 2048, 0x8000 | 4095),
        bits_stored=12,
        WindowCenter=2048,
        WindowWidth=4096,
    )
    assert grey_of(dirty) == grey_of(clean)


# -- Pixel Padding (C.7.5.1.1.2) ---------------------------------------------------------------


def test_padding_value_is_black_and_left_out_of_the_default_window() -> None:
    # MONOCHROME1: without padding handling, the 0 border would be the brightest value.
    pixels = np.tile(np.array([[0, 1000, 2000, 3000]], dtype=np.uint16), (50, 1))
    ds = make_image(pixels, photometric="MONOCHROME1", bits_stored=12, PixelPaddingValue=0)
    grey = display_grey(ds)[0]
    assert grey.tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0], abs=0.02)


def test_padding_range_limit() -> None:
    ds = make_image(
        row(4000, 4095, 3999, 0),
        bits_stored=12,
        PixelPaddingValue=4095,
        PixelPaddingRangeLimit=4000,
        WindowCenter=2000,
        WindowWidth=4000,
        VOILUTFunction="LINEAR_EXACT",
    )
    mask = padding_mask(mask_unused_bits(ds.pixel_array, ds), ds)
    assert mask is not None
    assert mask.tolist() == [[True, True, False, False]]
    assert grey_of(ds) == pytest.approx([0.0, 0.0, 3999 / 4000, 0.0], abs=1e-6)


# -- Colour (BT.601, as inference.picture) ------------------------------------------------------


def test_rgb_to_grey_table() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    ds = make_image(rgb, photometric="RGB")
    assert grey_of(ds) == pytest.approx([0.299, 0.587, 0.114, 1.0], abs=1e-6)


def test_ybr_full_is_converted_to_rgb_before_grey() -> None:
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    grey_rgb = display_grey(make_image(rgb, photometric="RGB"))
    grey_ybr = display_grey(make_image(ybr, photometric="YBR_FULL"))
    assert np.abs(grey_ybr - grey_rgb).max() <= 2 / 255  # YBR rounding, both ways


# -- Properties ---------------------------------------------------------------------------------

uint12_images = hnp.arrays(
    np.uint16,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
    elements=st.integers(0, 4095),
)
windows = st.tuples(st.floats(-1000, 5000, allow_nan=False), st.floats(1, 6000, allow_nan=False))


def header(photometric: str = "MONOCHROME2", **attributes: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@settings(max_examples=60, deadline=None)
@given(uint12_images, windows, st.sampled_from(list(VoiLutFunction)), st.booleans())
def test_grey_is_float32_in_unit_range(
    pixels: np.ndarray, window: tuple[float, float], function: VoiLutFunction, mono1: bool
) -> None:
    ds = header(
        "MONOCHROME1" if mono1 else "MONOCHROME2",
        WindowCenter=window[0],
        WindowWidth=window[1],
        VOILUTFunction=function.value,
    )
    before = pixels.copy()
    grey = grey_from_pixels(pixels, ds)
    assert grey.dtype == np.float32
    assert grey.shape == pixels.shape
    assert float(grey.min()) >= 0.0
    assert float(grey.max()) <= 1.0
    np.testing.assert_array_equal(pixels, before)  # the input is not modified


@settings(max_examples=60, deadline=None)
@given(uint12_images, windows | st.none())
def test_monochrome1_is_one_minus_monochrome2(
    pixels: np.ndarray, window: tuple[float, float] | None
) -> None:
    attributes = {} if window is None else {"WindowCenter": window[0], "WindowWidth": window[1]}
    mono1 = grey_from_pixels(pixels, header("MONOCHROME1", **attributes))
    mono2 = grey_from_pixels(pixels, header("MONOCHROME2", **attributes))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(-5000, 5000, allow_nan=False), min_size=2, max_size=30),
    windows,
    st.sampled_from(list(VoiLutFunction)),
)
def test_windows_are_monotonic(
    values: list[float], window: tuple[float, float], function: VoiLutFunction
) -> None:
    xs = np.sort(np.array(values))
    ys = apply_window(xs, window[0], window[1], function)
    assert np.all(np.diff(ys) >= -1e-12)


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.uint16, st.integers(1, 20), elements=st.integers(0, 65535)),
    st.integers(1, 16),
    st.booleans(),
)
def test_masking_is_idempotent_and_in_range(values: np.ndarray, bits: int, signed: bool) -> None:
    ds = Dataset()
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, bits, int(signed)
    once = mask_unused_bits(values, ds)
    assert np.array_equal(mask_unused_bits(once, ds), once)
    low = -(1 << (bits - 1)) if signed else 0
    high = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    assert once.min() >= low
    assert once.max() <= high


def test_needs_inversion_reads_only_the_header() -> None:
    assert needs_inversion(header("MONOCHROME1"))
    assert not needs_inversion(header("MONOCHROME2"))
    assert needs_inversion(header("MONOCHROME2", PresentationLUTShape="INVERSE"))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(16, 300),
    st.integers(16, 300),
    st.sampled_from([32, 64, 224]),
    st.integers(0, 3),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_rescaled_transform_round_trip(
    width: int, height: int, size: int, reduction: int, fx: float, fy: float
) -> None:
    rng = np.random.default_rng(width * 1000 + height)
    prepared = prepare(rng.random((height, width), dtype=np.float32), size, crop=False)
    factor = 2**reduction
    big = prepared.transform.rescaled_to(width * factor, height * factor, factor)
    x, y = fx * size, fy * size
    ox, oy = big.to_original(x, y)
    sx, sy = prepared.transform.to_original(x, y)
    assert (ox, oy) == pytest.approx((sx * factor, sy * factor), abs=1e-6)
    assert big.to_model(ox, oy) == pytest.approx((x, y), abs=1e-6)
    # Without a crop the model sees the whole grid but the remainder under the block size of
    # a decimated image (prepare averages whole blocks).
    block = decimation_factor(height, width, size)
    seen_w, seen_h = width // block * block, height // block * block
    assert big.crop == CropBox(0, 0, seen_w * factor, seen_h * factor)


def test_rescaled_transform_clips_the_crop_to_the_original_grid() -> None:
    small = GeometryTransform(
        original_width=461, original_height=489, crop=CropBox(10, 0, 461, 489),
        scale=0.5, pad_x=0, pad_y=0, size=256,
    )  # fmt: skip
    big = small.rescaled_to(1841, 1955, 4)
    assert big.crop == CropBox(40, 0, 1841, 1955)
    assert big.scale == pytest.approx(0.125)


def test_voi_lut_data_as_ow_bytes() -> None:
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [3, 0, 12])
    item.add_new("LUTData", "OW", np.array([0, 2000, 4095], dtype="<u2").tobytes())
    ds = make_image(row(0, 1, 2), bits_stored=12, VOILUTSequence=[item])
    assert grey_of(ds) == pytest.approx([0.0, 2000 / 4095, 1.0], abs=1e-6)

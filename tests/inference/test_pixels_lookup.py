"""The look-up table grey chain gives the stepwise chain's values to the last bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from inference.decode import decode_image
from inference.errors import NotAnalysable
from inference.pixels import grey_from_pixels, grey_lookup, grey_stepwise
from tests.inference.dicom_factory import make_image
from tests.inference.test_pixels_files import radiograph_paths


def assert_same(arr: np.ndarray, ds: Dataset) -> None:
    fast, slow = grey_lookup(arr, ds), grey_stepwise(arr, ds)
    assert fast.dtype == slow.dtype == np.float32
    assert fast.shape == slow.shape
    np.testing.assert_array_equal(fast, slow)


def test_every_shared_radiograph_gives_the_stepwise_grey(shared_dir: Path) -> None:
    compared = 0
    for path in radiograph_paths(shared_dir):
        ds = pydicom.dcmread(shared_dir / "dicom" / path)
        try:
            decoded = decode_image(ds, min_long_side=None)
        except NotAnalysable:
            continue
        if str(decoded.photometric).startswith("MONOCHROME"):
            assert_same(decoded.pixels, ds)
            compared += 1
    assert compared >= 30


def test_grey_from_pixels_chooses_the_table_for_integer_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Integer pixels go through the table, float pixels through the steps; same values."""
    import inference.pixels as pixels_module

    pixels = np.array([[0, 100, 4095, 2048]], dtype=np.uint16)
    ds = make_image(pixels, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    expected = grey_stepwise(pixels, ds)
    calls: list[str] = []
    for name in ("grey_lookup", "grey_stepwise"):
        original = getattr(pixels_module, name)

        def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(pixels_module, name, spy)
    np.testing.assert_array_equal(grey_from_pixels(pixels, ds), expected)
    assert calls == ["grey_lookup"]
    calls.clear()
    grey_from_pixels(pixels.astype(np.float32), ds)
    assert calls == ["grey_stepwise"]


@st.composite
def images(draw: st.DrawFn) -> tuple[np.ndarray, Dataset]:
    """Small images covering what the chain distinguishes: bits, sign, padding, LUTs, windows."""
    signed = draw(st.booleans())
    allocated = draw(st.sampled_from([8, 16]))
    stored = draw(st.integers(min_value=max(2, allocated - 6), max_value=allocated))
    dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}")
    rows, cols = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    # Raw values over the whole allocated range: the bits above Bits Stored must be ignored.
    info = np.iinfo(dtype)
    raw = draw(
        st.lists(
            st.integers(int(info.min), int(info.max)), min_size=rows * cols, max_size=rows * cols
        )
    )
    pixels = np.array(raw, dtype=dtype).reshape(rows, cols)
    low = -(1 << (stored - 1)) if signed else 0
    high = low + (1 << stored) - 1
    stored_value = st.integers(low, high)
    attributes: dict[str, Any] = {}
    if draw(st.booleans()):
        attributes["RescaleSlope"] = draw(st.sampled_from([1, 0.5, 2, -1]))
        attributes["RescaleIntercept"] = draw(st.sampled_from([0, -1024, 100]))
        attributes["RescaleType"] = "US"
    if draw(st.booleans()):
        attributes["PixelPaddingValue"] = draw(stored_value)
        if draw(st.booleans()):
            attributes["PixelPaddingRangeLimit"] = draw(stored_value)
    voi = draw(st.sampled_from(["none", "LINEAR", "LINEAR_EXACT", "SIGMOID", "bad"]))
    if voi != "none":
        attributes["WindowCenter"] = draw(st.integers(low - 10, high + 10))
        attributes["WindowWidth"] = 0 if voi == "bad" else draw(st.integers(1, 1 << stored))
        if voi in ("LINEAR_EXACT", "SIGMOID"):
            attributes["VOILUTFunction"] = voi
    photometric = draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2"]))
    if draw(st.booleans()):
        attributes["PresentationLUTShape"] = draw(st.sampled_from(["IDENTITY", "INVERSE"]))
    ds = make_image(pixels, bits_stored=stored, photometric=photometric, write=False, **attributes)
    return pixels, ds


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images())
def test_lookup_matches_stepwise(image: tuple[np.ndarray, Dataset]) -> None:
    pixels, ds = image
    assert_same(pixels, ds)


@pytest.mark.parametrize("signed", [False, True])
def test_default_window_sample_is_the_stepwise_sample(signed: bool) -> None:
    """A large 16-bit image without a window: percentiles from the same strided sample."""
    rng = np.random.default_rng(7)
    dtype = np.int16 if signed else np.uint16
    pixels = rng.integers(-2000 if signed else 0, 3000, size=(1500, 1400)).astype(dtype)
    pixels[:50] = 0
    ds = make_image(pixels, bits_stored=16, write=False, PixelPaddingValue=0)
    assert_same(pixels, ds)


def test_coinciding_percentiles_fall_back_to_the_extremes() -> None:
    pixels = np.full((200, 200), 1000, dtype=np.uint16)
    pixels[0, :3] = (5, 3000, 2)
    ds = make_image(pixels, bits_stored=12, write=False)
    assert_same(pixels, ds)
    grey = grey_lookup(pixels, ds)
    assert float(grey[0, 1]) == 1.0
    assert float(grey[0, 2]) == 0.0

"""Large images are averaged in whole blocks before the crop and the letterbox resize."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from inference.preprocess import (
    anatomy_crop,
    box_reduce,
    decimation_factor,
    letterbox,
    prepare,
)


@pytest.mark.parametrize(
    ("height", "width", "size", "factor"),
    [
        (454, 373, 320, 1),  # a FracAtlas picture: never decimated
        (1279, 1000, 320, 1),
        (1280, 1000, 320, 2),
        (2140, 1760, 320, 3),
        (1760, 1760, 320, 2),
        (3000, 2500, 320, 4),
        (4000, 40, 320, 2),  # the short side stays at least 16 px
    ],
)
def test_decimation_factor(height: int, width: int, size: int, factor: int) -> None:
    assert decimation_factor(height, width, size) == factor


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(8, 90), st.integers(8, 90))
def test_box_reduce_is_the_block_mean(factor: int, height: int, width: int) -> None:
    rng = np.random.default_rng(height * 100 + width)
    grey = rng.random((height, width), dtype=np.float32)
    h, w = height // factor, width // factor
    if h == 0 or w == 0:
        return
    expected = grey[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))
    np.testing.assert_allclose(box_reduce(grey, factor), expected, atol=1e-6)


def _radiograph(height: int, width: int) -> np.ndarray:
    """A smooth, textured 'limb' on a dark border, as a CR plate shows it."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    limb = ((xx - 0.55 * width) / (0.22 * width)) ** 2 + ((yy - 0.5 * height) / (0.4 * height)) ** 2
    grey = np.where(limb < 1.0, 0.55 + 0.25 * np.cos(xx / 37.0) * np.sin(yy / 23.0), 0.03)
    return cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 3.0)


def test_decimated_input_matches_the_direct_resize() -> None:
    grey = _radiograph(2140, 1760)
    prepared = prepare(grey, 320)
    assert decimation_factor(2140, 1760, 320) == 3
    box = anatomy_crop(grey)  # the direct path: crop and area resize on the full grid
    direct, _, _, _ = letterbox(grey[box.y0 : box.y1, box.x0 : box.x1], 320)
    crop = prepared.transform.crop
    # The crop found on the averaged copy is the full-grid crop to within one block and margin.
    for ours, theirs in zip(
        (crop.x0, crop.y0, crop.x1, crop.y1), (box.x0, box.y0, box.x1, box.y1), strict=True
    ):
        assert abs(ours - theirs) <= 12
    content = prepared.transform.content_box()
    ours = prepared.tensor[content.y0 : content.y1, content.x0 : content.x1, 0]
    theirs = direct[content.y0 : content.y1, content.x0 : content.x1]
    assert float(np.mean(np.abs(ours - theirs))) < 0.01


def test_the_transform_maps_a_mark_to_where_the_model_sees_it() -> None:
    grey = _radiograph(2140, 1760)
    grey[1300:1330, 900:930] = 1.0  # a bright 30 px square, centre (915, 1315)
    prepared = prepare(grey, 320)
    model_x, model_y = prepared.transform.to_model(915.0, 1315.0)
    rows, cols = np.nonzero(prepared.tensor[..., 0] > 0.95)  # the square, about 4.5 px wide
    seen_x, seen_y = float(cols.mean()) + 0.5, float(rows.mean()) + 0.5
    assert abs(seen_x - model_x) <= 0.75
    assert abs(seen_y - model_y) <= 0.75
    back_x, back_y = prepared.transform.to_original(seen_x, seen_y)
    assert abs(back_x - 915) <= 12
    assert abs(back_y - 1315) <= 12


def test_values_outside_the_unit_range_and_nan_are_bounded() -> None:
    grey = _radiograph(1400, 1300)
    grey[:10, :10] = np.nan
    grey[20:30, 20:30] = 3.0
    grey[40:50, 40:50] = -2.0
    tensor = prepare(grey, 320).tensor
    assert np.isfinite(tensor).all()
    assert float(tensor.min()) >= 0.0
    assert float(tensor.max()) <= 1.0


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([224, 320]), st.integers(1280, 4000), st.integers(16, 4000))
@example(224, 1536, 840)  # 280 x 512 blocks of 3: 122.5 px wide, a tie that float error broke
@example(224, 2560, 360)
def test_the_content_box_is_exactly_the_resized_content(size: int, long: int, short: int) -> None:
    # A one-pixel disagreement would stretch a column of padding over the crop in
    # map_to_original and let regions and peaks be searched in it.
    for height, width in ((long, short), (short, long)):
        prepared = prepare(np.ones((height, width), np.float32), size, crop=False)
        filled = prepared.tensor[..., 0] > 0
        box = prepared.transform.content_box()
        assert box.width == int(filled.any(axis=0).sum())
        assert box.height == int(filled.any(axis=1).sum())
        assert filled[box.y0 : box.y1, box.x0 : box.x1].all()

"""Grad-CAM maths: shape, range, the all-zero guard, resizing and peaks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from inference.gradcam import gradcam_maps, map_focus, resize_map

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@given(
    arrays(np.float32, (2, 3, 4, 5), elements=finite),
    arrays(np.float32, (2, 3, 4, 5), elements=finite),
)
def test_maps_are_in_unit_range_and_finite(acts: np.ndarray, grads: np.ndarray) -> None:
    maps = gradcam_maps(acts, grads)
    assert maps.shape == (2, 3, 4)
    assert maps.dtype == np.float32
    assert np.all(np.isfinite(maps))
    assert maps.min() >= 0.0
    assert maps.max() <= 1.0
    for cam in maps:
        assert cam.max() == 0.0 or cam.max() == pytest.approx(1.0)


def test_zero_gradients_give_an_all_zero_map_not_nan() -> None:
    acts = np.random.default_rng(0).random((1, 4, 4, 8)).astype(np.float32)
    maps = gradcam_maps(acts, np.zeros_like(acts))
    assert np.all(maps == 0.0)


def test_negative_evidence_only_gives_zero() -> None:
    acts = np.ones((1, 2, 2, 1), np.float32)
    assert np.all(gradcam_maps(acts, -np.ones_like(acts)) == 0.0)


def test_map_follows_weighted_activations() -> None:
    acts = np.zeros((1, 3, 3, 2), np.float32)
    acts[0, 0, 2, 0] = 2.0  # channel 0 active top right
    acts[0, 2, 0, 1] = 5.0  # channel 1 active bottom left
    grads = np.zeros_like(acts)
    grads[..., 0] = 1.0  # only channel 0 supports the class
    cam = gradcam_maps(acts, grads)[0]
    assert np.unravel_index(int(np.argmax(cam)), cam.shape) == (0, 2)
    assert cam[0, 2] == 1.0
    assert cam[2, 0] == 0.0


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="must be equal"):
        gradcam_maps(np.zeros((1, 2, 2, 3), np.float32), np.zeros((1, 2, 2, 4), np.float32))


@given(arrays(np.float32, (5, 7), elements=st.floats(0, 1, width=32)), st.integers(8, 64))
def test_resize_keeps_range(cam: np.ndarray, size: int) -> None:
    out = resize_map(cam, size)
    assert out.shape == (size, size)
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_focus_of_a_single_hot_pixel_is_its_centre() -> None:
    heat = np.zeros((5, 6), np.float32)
    heat[3, 1] = 1.0
    assert map_focus(heat) == (1.5, 3.5)


def test_focus_follows_the_peak_area_between_pixels() -> None:
    # Two equal hot pixels side by side: the maximum is the first, the focus between them.
    heat = np.zeros((4, 4), np.float32)
    heat[1, 1] = heat[1, 2] = 0.8
    assert np.unravel_index(int(np.argmax(heat)), heat.shape) == (1, 1)
    assert map_focus(heat) == pytest.approx((2.0, 1.5))


def test_focus_ignores_a_second_area_and_what_lies_below_the_level() -> None:
    heat = np.zeros((8, 8), np.float32)
    heat[1, 1] = 1.0
    heat[1, 2] = 0.5  # below 0.75 of the peak: not part of the area
    heat[6, 6] = heat[6, 7] = 0.9  # a separate area: not the peak's
    assert map_focus(heat) == (1.5, 1.5)
    # At a level of 0.5 the neighbour joins, weighted by its value.
    x, y = map_focus(heat, level=0.5)
    assert y == 1.5
    assert x == pytest.approx(1.5 + 0.5 / 1.5)


def test_focus_of_an_empty_map_is_its_first_pixel() -> None:
    assert map_focus(np.zeros((3, 3), np.float32)) == (0.5, 0.5)


def test_focus_refuses_a_bad_level_or_map() -> None:
    with pytest.raises(ValueError, match="level"):
        map_focus(np.ones((2, 2), np.float32), level=0.0)
    with pytest.raises(ValueError, match="2-D"):
        map_focus(np.ones(3, np.float32))


@given(arrays(np.float32, (6, 9), elements=st.floats(0, 1, width=32)))
def test_focus_lies_within_the_peak_area(heat: np.ndarray) -> None:
    x, y = map_focus(heat)
    peak = heat.max()
    if peak <= 0:
        assert (x, y) == (0.5, 0.5)
        return
    above = np.argwhere(heat >= 0.75 * peak)
    (y0, x0), (y1, x1) = above.min(axis=0), above.max(axis=0)
    assert x0 <= x <= x1 + 1
    assert y0 <= y <= y1 + 1

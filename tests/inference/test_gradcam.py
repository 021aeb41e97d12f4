"""Grad-CAM maths: shape, range, the all-zero guard, resizing and peaks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from inference.gradcam import gradcam_maps, map_peak, resize_map

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
    assert map_peak(cam) == (2, 0)
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

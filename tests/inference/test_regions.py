"""Suspected fracture regions from a localisation map: boxes, ranking, probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.preprocess import CropBox, GeometryTransform
from inference.regions import MAX_REGIONS, Region, candidate_boxes, find_regions

BOTH = ("high_sensitivity", "high_specificity")


def identity(size: int = 64) -> GeometryTransform:
    return GeometryTransform(size, size, CropBox(0, 0, size, size), 1.0, 0, 0, size)


def blob_map(size: int, blobs: list[tuple[int, int, int, int, float]]) -> np.ndarray:
    heat = np.zeros((size, size), dtype=np.float32)
    for x0, y0, x1, y1, value in blobs:
        heat[y0:y1, x0:x1] = value
    return heat


def test_two_hot_spots_give_two_boxes_strongest_first() -> None:
    heat = blob_map(64, [(10, 12, 20, 18, 0.9), (40, 40, 50, 52, 0.6)])
    regions = find_regions(heat, identity(), 0.8, BOTH)
    assert [(r.x0, r.y0, r.x1, r.y1) for r in regions] == [(10, 12, 20, 18), (40, 40, 50, 52)]
    assert regions[0].probability == pytest.approx(0.8)
    assert regions[1].probability == pytest.approx(0.8 * 0.6 / 0.9)
    assert regions[0].operating_points == BOTH


def test_a_weak_second_spot_is_not_reported() -> None:
    heat = blob_map(64, [(10, 12, 20, 18, 0.9), (40, 40, 50, 52, 0.3)])
    assert len(find_regions(heat, identity(), 0.8, BOTH)) == 1


def test_a_negative_image_has_no_regions() -> None:
    heat = blob_map(64, [(10, 12, 20, 18, 0.9)])
    assert find_regions(heat, identity(), 0.1, ()) == ()


def test_an_empty_map_has_no_regions() -> None:
    assert find_regions(np.zeros((64, 64), np.float32), identity(), 0.9, BOTH) == ()


def test_letterbox_padding_is_never_a_region_and_boxes_map_to_original_pixels() -> None:
    # A 200 x 100 original, letterboxed into 64 px: scale 0.32, content rows 16..48.
    transform = GeometryTransform(200, 100, CropBox(0, 0, 200, 100), 0.32, 0, 16, 64)
    heat = blob_map(64, [(0, 0, 64, 8, 1.0), (32, 24, 40, 32, 0.7)])  # padding is hotter
    [region] = find_regions(heat, transform, 0.9, BOTH)
    assert (region.x0, region.y0, region.x1, region.y1) == pytest.approx((100, 25, 125, 50))


def test_regions_survive_a_json_round_trip() -> None:
    region = Region(1.0, 2.0, 30.5, 40.5, 0.8, 0.75, BOTH)
    assert Region.from_json(region.to_json()) == region


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 50),
            st.integers(0, 50),
            st.integers(2, 13),
            st.integers(2, 13),
            st.floats(0.05, 1.0),
        ),
        min_size=1,
        max_size=6,
    ),
    st.floats(0.0, 1.0),
)
def test_regions_lie_inside_the_image_and_never_exceed_the_image_probability(
    blobs: list[tuple[int, int, int, int, float]], probability: float
) -> None:
    heat = blob_map(64, [(x, y, x + w, y + h, v) for x, y, w, h, v in blobs])
    regions = find_regions(heat, identity(), probability, BOTH)
    assert 1 <= len(regions) <= MAX_REGIONS
    assert [r.score for r in regions] == sorted((r.score for r in regions), reverse=True)
    for region in regions:
        assert 0 <= region.x0 < region.x1 <= 64
        assert 0 <= region.y0 < region.y1 <= 64
        assert 0.0 <= region.probability <= probability + 1e-9
    assert candidate_boxes(heat, identity())[0][0] == pytest.approx(float(heat.max()))

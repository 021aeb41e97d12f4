"""The heat-map picture: pure functions checked with reference values and Hypothesis."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray

from reporting.render import (
    HEAT_FLOOR,
    HEAT_MAX_ALPHA,
    MAX_LONG_SIDE,
    MIN_LONG_SIDE,
    BannerText,
    ascii_text,
    blend_heatmap,
    compose_gradcam,
    draw_legend,
    fit_long_side,
    grey_to_rgb,
    heat_alpha,
    heat_colours,
    render_png,
)

unit_floats = st.floats(min_value=0.0, max_value=1.0, width=32)
TEXT = BannerText(headline="FRACTURE SUSPECTED", positive=True, lines=("line one", "line two"))


def planes(rows: int, columns: int) -> st.SearchStrategy[NDArray[np.float32]]:
    return arrays(np.float32, (rows, columns), elements=unit_floats)


@given(st.integers(1, 6000), st.integers(1, 6000))
def test_fit_long_side_keeps_aspect_and_bounds(rows: int, columns: int) -> None:
    new_rows, new_columns = fit_long_side(rows, columns)
    long_side = max(new_rows, new_columns)
    if MIN_LONG_SIDE <= max(rows, columns) <= MAX_LONG_SIDE:
        assert (new_rows, new_columns) == (rows, columns)
    else:
        assert long_side in (MIN_LONG_SIDE, MAX_LONG_SIDE)
    # Rounding moves the shorter side by at most half a pixel.
    scale = long_side / max(rows, columns)
    assert abs(new_rows - rows * scale) <= 0.5 + 1e-9 or new_rows == 1
    assert abs(new_columns - columns * scale) <= 0.5 + 1e-9 or new_columns == 1


@pytest.mark.parametrize(("rows", "columns"), [(0, 5), (5, 0), (-1, 3)])
def test_fit_long_side_refuses_empty_images(rows: int, columns: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        fit_long_side(rows, columns)


@given(planes(4, 5), planes(4, 5))
def test_heat_alpha_is_bounded_and_zero_below_floor(
    display: NDArray[np.float32], heat: NDArray[np.float32]
) -> None:
    alpha = heat_alpha(heat)
    assert alpha.dtype == np.float32
    assert np.all(alpha >= 0.0)
    assert np.all(alpha <= HEAT_MAX_ALPHA + 1e-6)
    assert np.all(alpha[heat <= HEAT_FLOOR] == 0.0)


@given(planes(6, 7), planes(6, 7))
def test_blending_leaves_cool_pixels_grey_and_inputs_untouched(
    display: NDArray[np.float32], heat: NDArray[np.float32]
) -> None:
    display_before, heat_before = display.copy(), heat.copy()
    blended = blend_heatmap(display, heat)
    assert blended.shape == (6, 7, 3)
    assert blended.dtype == np.uint8
    cool = heat <= HEAT_FLOOR
    assert np.array_equal(blended[cool], grey_to_rgb(display)[cool])
    assert np.array_equal(display, display_before)
    assert np.array_equal(heat, heat_before)


def blend_pixel_by_pixel(
    display: NDArray[np.float32], heat: NDArray[np.float32]
) -> NDArray[np.uint8]:
    """The blend written as the per-pixel formula over the hot pixels only (the reference)."""
    out = grey_to_rgb(display)
    hot = heat > HEAT_FLOOR
    if not hot.any():
        return out
    values = heat[hot].astype(np.float32)
    alpha = heat_alpha(values)[:, np.newaxis]
    colour = heat_colours(values.reshape(-1, 1)).reshape(-1, 3).astype(np.float32)
    blended = out[hot].astype(np.float32) * (1.0 - alpha) + colour * alpha
    out[hot] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


@given(planes(9, 11), planes(9, 11))
def test_blend_equals_the_per_pixel_formula(
    display: NDArray[np.float32], heat: NDArray[np.float32]
) -> None:
    assert np.array_equal(blend_heatmap(display, heat), blend_pixel_by_pixel(display, heat))


def test_blend_of_a_large_picture_with_a_scattered_hot_region() -> None:
    rng = np.random.default_rng(3)
    display = rng.random((700, 500), dtype=np.float32)
    heat = np.zeros((700, 500), dtype=np.float32)
    heat[100:400, 50:300] = rng.random((300, 250), dtype=np.float32)  # hot and cool mixed
    heat[650, 480] = 0.9  # one hot pixel far away widens the rectangle
    assert np.array_equal(blend_heatmap(display, heat), blend_pixel_by_pixel(display, heat))


def test_hot_pixels_are_coloured() -> None:
    display = np.full((3, 3), 0.5, dtype=np.float32)
    heat = np.ones((3, 3), dtype=np.float32)
    blended = blend_heatmap(display, heat)
    # TURBO at 1.0 is dark red: red well above blue.
    assert int(blended[1, 1, 0]) > int(blended[1, 1, 2]) + 30


def test_grey_to_rgb_reference_values() -> None:
    grey = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert grey_to_rgb(grey)[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]


@given(st.text(max_size=40))
def test_ascii_text_is_printable_ascii_of_the_same_length(text: str) -> None:
    cleaned = ascii_text(text)
    assert len(cleaned) == len(text)
    assert all(" " <= ch <= "~" for ch in cleaned)


def test_ascii_text_reference() -> None:
    assert ascii_text("Müller v1.0\n") == "M?ller v1.0?"


@given(arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8), st.just(3))))
def test_png_decodes_to_the_same_pixels(rgb: NDArray[np.uint8]) -> None:
    png = render_png(rgb)
    decoded = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded[:, :, ::-1], rgb)


def test_png_refuses_non_rgb_arrays() -> None:
    with pytest.raises(ValueError, match="H x W x 3"):
        render_png(np.zeros((4, 4), dtype=np.uint8))


@pytest.mark.parametrize(("rows", "columns"), [(169, 211), (3000, 1200), (900, 900)])
def test_composition_places_banner_image_and_legend(rows: int, columns: int) -> None:
    display = np.linspace(0, 1, rows * columns, dtype=np.float32).reshape(rows, columns)
    heat = np.zeros((rows, columns), dtype=np.float32)
    rendering = compose_gradcam(display, heat, TEXT)
    box = rendering.image_box
    assert (box.height, box.width) == fit_long_side(rows, columns)
    assert rendering.rgb.shape[0] == box.top + box.height
    assert rendering.rgb.shape[1] > box.width  # legend on the right
    assert box.top > 0  # banner on top
    image = rendering.rgb[box.top :, : box.width]
    # No heat: the image part is grey (R == G == B).
    assert np.array_equal(image[:, :, 0], image[:, :, 1])
    # The banner carries text in the result's colour (not only grey levels).
    banner = rendering.rgb[: box.top]
    assert np.any(banner[:, :, 0].astype(int) - banner[:, :, 2].astype(int) > 100)


def test_legend_shows_the_colour_bar() -> None:
    legend = draw_legend(600, unit=0.6)
    colourful = np.abs(legend[:, :, 0].astype(int) - legend[:, :, 2].astype(int)) > 60
    assert colourful.sum() > 1000


def test_composition_refuses_mismatched_planes() -> None:
    with pytest.raises(ValueError, match="must be equal 2-D shapes"):
        compose_gradcam(
            np.zeros((4, 4), dtype=np.float32), np.zeros((4, 5), dtype=np.float32), TEXT
        )

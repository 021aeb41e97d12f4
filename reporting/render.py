"""Pictures for people: the radiograph with its Grad-CAM heat map, a colour legend and a banner.

Pure functions from arrays to ``uint8`` RGB arrays (``H x W x 3``); encoding is separate
(:func:`render_png`; the DICOM Secondary Capture is built in :mod:`reporting.sc`). Nothing here
mutates its inputs. Text is burned in with OpenCV's Hershey fonts, which draw ASCII only, so
all text goes through :func:`ascii_text` first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

RGBImage = NDArray[np.uint8]

#: The rendered radiograph's longest side is brought into this range (pixels).
MAX_LONG_SIDE = 2048
MIN_LONG_SIDE = 768
#: Heat below this value is not drawn; the colour ramps in over the next ``HEAT_RAMP``.
HEAT_FLOOR = 0.2
HEAT_RAMP = 0.1
#: Opacity of the heat colour at full strength.
HEAT_MAX_ALPHA = 0.5
COLORMAP = cv2.COLORMAP_TURBO
FONT = cv2.FONT_HERSHEY_SIMPLEX

_WHITE = (255, 255, 255)
_BANNER_BACKGROUND = (24, 24, 24)
_POSITIVE_COLOUR = (255, 80, 64)
_NEGATIVE_COLOUR = (96, 220, 96)


@dataclass(frozen=True)
class Box:
    """A rectangle in a rendering, in pixels (top-left corner and size)."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class BannerText:
    """The lines burned into the banner; ``headline`` is drawn in the result's colour."""

    headline: str
    positive: bool
    lines: tuple[str, ...]


@dataclass(frozen=True)
class RegionMark:
    """A suspected fracture to outline, in the source image's pixel coordinates.

    ``solid`` boxes are reported at the high-specificity point; dashed ones only at the
    high-sensitivity point (the convention of commercial fracture CAD readers know).
    """

    x0: float
    y0: float
    x1: float
    y1: float
    label: str
    solid: bool


#: Colour of the region outlines (drawn over a dark halo so they show on bone and on heat).
REGION_COLOUR = (0, 255, 255)
_HALO = (0, 0, 0)


@dataclass(frozen=True)
class Rendering:
    """A composed picture and where in it the (resized) radiograph lies."""

    rgb: RGBImage
    image_box: Box


def ascii_text(text: str) -> str:
    """``text`` with every non-printable or non-ASCII character replaced by ``?``."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


def fit_long_side(
    rows: int, columns: int, *, minimum: int = MIN_LONG_SIDE, maximum: int = MAX_LONG_SIDE
) -> tuple[int, int]:
    """Size ``(rows, columns)`` scaled so that the longer side is within ``[minimum, maximum]``.

    The aspect ratio is kept (to the nearest pixel); sizes already in range are unchanged.
    """
    if rows < 1 or columns < 1:
        raise ValueError(f"image size must be positive, got {rows} x {columns}")
    if not 1 <= minimum <= maximum:
        raise ValueError(f"need 1 <= minimum <= maximum, got {minimum}, {maximum}")
    long_side = max(rows, columns)
    target = min(max(long_side, minimum), maximum)
    if target == long_side:
        return rows, columns
    scale = target / long_side
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def resize_plane(plane: NDArray[np.float32], rows: int, columns: int) -> NDArray[np.float32]:
    """Resample a 2-D float plane to ``rows x columns`` (area averaging when shrinking)."""
    if plane.shape == (rows, columns):
        return plane.copy()
    shrinking = rows * columns < plane.shape[0] * plane.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(plane, (columns, rows), interpolation=interpolation)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def grey_to_rgb(display: NDArray[np.float32]) -> RGBImage:
    """A grey plane in ``[0, 1]`` as ``uint8`` RGB (rounded, saturated)."""
    grey = cv2.convertScaleAbs(np.ascontiguousarray(display, dtype=np.float32), alpha=255.0)
    rgb: RGBImage = np.asarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    return rgb


def heat_colours(heat: NDArray[np.float32]) -> RGBImage:
    """The colour map's RGB colour for every heat value in ``[0, 1]``."""
    levels = np.clip(np.rint(heat * 255.0), 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(levels, COLORMAP)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def heat_alpha(
    heat: NDArray[np.float32],
    *,
    floor: float = HEAT_FLOOR,
    ramp: float = HEAT_RAMP,
    max_alpha: float = HEAT_MAX_ALPHA,
) -> NDArray[np.float32]:
    """Opacity of the heat colour: 0 below ``floor``, rising to ``max_alpha`` over ``ramp``."""
    ramped: NDArray[np.float32] = np.clip((heat - floor) / ramp, 0.0, 1.0).astype(np.float32)
    return ramped * np.float32(max_alpha)


def blend_heatmap(display: NDArray[np.float32], heat: NDArray[np.float32]) -> RGBImage:
    """The grey radiograph with the heat map blended in colour where the heat is notable.

    Only pixels above the heat floor are blended (elsewhere the opacity is 0). The arithmetic
    runs on whole rows and columns of the smallest rectangle holding every such pixel, so the
    cost follows the size of the highlighted region, not of the image, without gathering and
    scattering single pixels (which cost about 0.4 s for a 2048-pixel picture that is mostly
    highlighted).
    """
    if display.shape != heat.shape:
        raise ValueError(f"display {display.shape} and heat map {heat.shape} differ in shape")
    out = grey_to_rgb(display)
    hot = heat > HEAT_FLOOR
    rows = np.flatnonzero(hot.any(axis=1))
    if rows.size == 0:
        return out
    columns = np.flatnonzero(hot.any(axis=0))
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(columns[0]), int(columns[-1]) + 1))
    values = np.asarray(heat[box], dtype=np.float32)
    alpha = heat_alpha(values)
    alpha[~hot[box]] = 0.0  # exactly the grey where not hot (NaN heat included)
    alpha = alpha[:, :, np.newaxis]
    # grey * (1 - alpha) + colour * alpha, evaluated in place on float32 copies.
    blended = out[box].astype(np.float32)
    blended *= 1.0 - alpha
    colour = heat_colours(values).astype(np.float32)
    colour *= alpha
    blended += colour
    np.rint(blended, out=blended)
    np.clip(blended, 0, 255, out=blended)
    out[box] = blended.astype(np.uint8)
    return out


def _font_scale_for(texts: Sequence[str], width: int, wanted: float, thickness: int) -> float:
    """The largest font scale up to ``wanted`` at which every text fits in ``width`` pixels."""
    widest = max(cv2.getTextSize(text, FONT, 1.0, thickness)[0][0] for text in texts)
    return min(wanted, width / max(widest, 1))


def _line_height(scale: float, thickness: int) -> int:
    (_, height), baseline = cv2.getTextSize("Ag", FONT, scale, thickness)
    return int(np.ceil((height + baseline) * 1.45))


def draw_banner(width: int, text: BannerText, *, unit: float) -> RGBImage:
    """A dark band ``width`` pixels wide carrying the result in large letters and the details.

    ``unit`` is the size of the picture in thousands of pixels; it sets the letter size.
    """
    margin = max(6, round(16 * unit))
    thickness = max(1, round(2 * unit))
    headline = ascii_text(text.headline)
    lines = [ascii_text(line) for line in text.lines]
    usable = width - 2 * margin
    head_scale = _font_scale_for([headline], usable, 1.5 * unit, thickness + 1)
    line_scale = _font_scale_for(lines or [" "], usable, 0.9 * unit, thickness)
    head_height = _line_height(head_scale, thickness + 1)
    line_height = _line_height(line_scale, thickness)
    height = 2 * margin + head_height + line_height * len(lines)
    band = np.empty((height, width, 3), dtype=np.uint8)
    band[:] = _BANNER_BACKGROUND
    colour = _POSITIVE_COLOUR if text.positive else _NEGATIVE_COLOUR
    y = margin + round(head_height * 0.75)
    cv2.putText(band, headline, (margin, y), FONT, head_scale, colour, thickness + 1, cv2.LINE_AA)
    y = margin + head_height
    for line in lines:
        y_text = y + round(line_height * 0.72)
        cv2.putText(band, line, (margin, y_text), FONT, line_scale, _WHITE, thickness, cv2.LINE_AA)
        y += line_height
    return band


def draw_legend(height: int, *, unit: float) -> RGBImage:
    """A dark panel ``height`` pixels tall with the heat colour bar from 0 (bottom) to 1 (top).

    The part of the bar below the drawing floor is shown grey, as it is on the image.
    """
    margin = max(6, round(20 * unit))
    thickness = max(1, round(2 * unit))
    label_scale = 0.7 * unit
    (label_width, label_height), _ = cv2.getTextSize("0.5", FONT, label_scale, thickness)
    bar_width = max(8, round(36 * unit))
    width = 3 * margin + bar_width + label_width
    panel = np.empty((height, width, 3), dtype=np.uint8)
    panel[:] = _BANNER_BACKGROUND
    title_height = _line_height(label_scale, thickness)
    top = margin + title_height
    bottom = height - margin
    bar_height = bottom - top
    if bar_height < 10:
        return panel
    cv2.putText(
        panel,
        "heat",
        (margin, margin + label_height),
        FONT,
        label_scale,
        _WHITE,
        thickness,
        cv2.LINE_AA,
    )
    values = np.linspace(1.0, 0.0, bar_height, dtype=np.float32)[:, np.newaxis]
    column = np.repeat(values, bar_width, axis=1)
    below_floor = column < HEAT_FLOOR
    bar = heat_colours(column)
    bar[below_floor] = (128, 128, 128)
    panel[top:bottom, margin : margin + bar_width] = bar
    for value in (1.0, 0.5, HEAT_FLOOR, 0.0):
        y = top + round((1.0 - value) * (bar_height - 1))
        cv2.line(
            panel,
            (margin + bar_width, y),
            (margin + bar_width + margin // 2, y),
            _WHITE,
            thickness,
        )
        label = f"{value:.1f}"
        y_text = min(max(y + label_height // 2, top + label_height), bottom)
        cv2.putText(
            panel,
            label,
            (2 * margin + bar_width, y_text),
            FONT,
            label_scale,
            _WHITE,
            thickness,
            cv2.LINE_AA,
        )
    return panel


def _dashed_rectangle(
    image: RGBImage,
    p0: tuple[int, int],
    p1: tuple[int, int],
    colour: tuple[int, int, int],
    thickness: int,
    dash: int,
) -> None:
    (x0, y0), (x1, y1) = p0, p1
    for a, b, fixed, horizontal in (
        (x0, x1, y0, True),
        (x0, x1, y1, True),
        (y0, y1, x0, False),
        (y0, y1, x1, False),
    ):
        for start in range(a, b, 2 * dash):
            end = min(start + dash, b)
            if horizontal:
                cv2.line(image, (start, fixed), (end, fixed), colour, thickness, cv2.LINE_AA)
            else:
                cv2.line(image, (fixed, start), (fixed, end), colour, thickness, cv2.LINE_AA)


def draw_regions(
    image: RGBImage, regions: Sequence[RegionMark], scale: tuple[float, float], *, unit: float
) -> RGBImage:
    """``image`` with each region outlined and labelled; ``scale`` maps source to image pixels.

    Returns a new array; ``image`` is not modified.
    """
    out = image.copy()
    if not regions:
        return out
    sx, sy = scale
    thickness = max(2, round(3 * unit))
    font_scale = 0.9 * unit
    for region in regions:
        p0 = (round(region.x0 * sx), round(region.y0 * sy))
        p1 = (round(region.x1 * sx) - 1, round(region.y1 * sy) - 1)
        for colour, width in ((_HALO, thickness + 2), (REGION_COLOUR, thickness)):
            if region.solid:
                cv2.rectangle(out, p0, p1, colour, width, cv2.LINE_AA)
            else:
                _dashed_rectangle(out, p0, p1, colour, width, dash=max(6, round(14 * unit)))
        text = ascii_text(region.label)
        (_, th), _ = cv2.getTextSize(text, FONT, font_scale, thickness)
        origin = (p0[0], max(th + 2, p0[1] - thickness - 2))
        cv2.putText(out, text, origin, FONT, font_scale, _HALO, thickness + 2, cv2.LINE_AA)
        cv2.putText(out, text, origin, FONT, font_scale, REGION_COLOUR, thickness, cv2.LINE_AA)
    return out


def compose_gradcam(
    display: NDArray[np.float32],
    heatmap: NDArray[np.float32],
    text: BannerText,
    regions: Sequence[RegionMark] = (),
) -> Rendering:
    """The full picture: banner on top, radiograph with heat map below, legend on its right.

    The radiograph keeps its aspect ratio; it is scaled so that its longer side lies within
    ``[MIN_LONG_SIDE, MAX_LONG_SIDE]`` (small images are enlarged so the text stays readable).
    """
    if display.ndim != 2 or display.shape != heatmap.shape:
        raise ValueError(
            f"display {display.shape} and heat map {heatmap.shape} must be equal 2-D shapes"
        )
    rows, columns = fit_long_side(*display.shape)
    image = blend_heatmap(
        resize_plane(display, rows, columns), resize_plane(heatmap, rows, columns)
    )
    unit = max(rows, columns) / 1000.0
    scale = (columns / display.shape[1], rows / display.shape[0])
    image = draw_regions(image, regions, scale, unit=unit)
    legend = draw_legend(rows, unit=unit)
    width = columns + legend.shape[1]
    banner = draw_banner(width, text, unit=unit)
    canvas = np.zeros((banner.shape[0] + rows, width, 3), dtype=np.uint8)
    canvas[: banner.shape[0]] = banner
    canvas[banner.shape[0] :, :columns] = image
    canvas[banner.shape[0] :, columns:] = legend
    return Rendering(canvas, Box(top=banner.shape[0], left=0, height=rows, width=columns))


def render_png(rgb: RGBImage) -> bytes:
    """Encode an ``H x W x 3`` ``uint8`` RGB array as PNG bytes."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 array, got {rgb.shape} {rgb.dtype}")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(encoded.tobytes())

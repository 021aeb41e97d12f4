"""PNG renderings of stored radiographs for the study view, through the model's grey chain.

The preview is the stored DICOM through :func:`inference.pixels.display_grey` (what the model
sees, before cropping); the heat-map picture blends the stored Grad-CAM map on it
(:mod:`reporting.render`). Nothing is written: both are made on request.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_node.storage import InstanceStore
from inference.errors import NotAnalysable
from inference.pixels import display_grey
from pipeline.heatmaps import heatmap_on_original_grid
from reporting.render import (
    HEAT_FLOOR,
    blend_heatmap,
    grey_to_rgb,
    heat_alpha,
    heat_colours,
    render_png,
    resize_plane,
)

#: Default and largest long side of a rendering, in pixels.
DEFAULT_SIZE = 1024
MAX_SIZE = 4096


class PictureUnavailable(RuntimeError):  # noqa: N818 - reads as the condition
    """The stored image (or heat map) cannot be rendered; the message has no patient data."""


def grey_of(path: Path, max_size: int) -> NDArray[np.float32]:
    """The stored image at ``path`` as display grey, long side at most ``max_size``."""
    try:
        ds = dcmread(path)
        return display_grey(ds, max_size=max_size)
    except NotAnalysable as exc:
        raise PictureUnavailable(f"the image cannot be shown ({exc.reason})") from exc
    except (OSError, InvalidDicomError, AttributeError, ValueError, TypeError) as exc:
        raise PictureUnavailable(f"the stored image cannot be read ({type(exc).__name__})") from exc


def preview_png(store: InstanceStore, storage_path: str, max_size: int = DEFAULT_SIZE) -> bytes:
    """The radiograph as PNG."""
    return render_png(grey_to_rgb(grey_of(store.absolute(storage_path), max_size)))


def _heat(store: InstanceStore, heatmap_path: str, shape: tuple[int, int]) -> NDArray[np.float32]:
    try:
        heat = heatmap_on_original_grid(store, heatmap_path)
    except (OSError, KeyError, ValueError) as exc:
        raise PictureUnavailable(f"the heat map cannot be read ({type(exc).__name__})") from exc
    return resize_plane(np.clip(heat, 0.0, 1.0).astype(np.float32), *shape)


def heatmap_png(
    store: InstanceStore,
    storage_path: str,
    heatmap_path: str,
    max_size: int = DEFAULT_SIZE,
    *,
    overlay: bool = False,
) -> bytes:
    """The radiograph with its stored heat map blended in colour, as PNG.

    With ``overlay`` only the heat colours, on a transparent background (RGBA): the viewer lays
    them over its own windowed radiograph at the reader's opacity.
    """
    grey = grey_of(store.absolute(storage_path), max_size)
    heat = _heat(store, heatmap_path, grey.shape)
    if overlay:
        return overlay_png(heat)
    return render_png(blend_heatmap(grey, heat))


def overlay_png(heat: NDArray[np.float32]) -> bytes:
    """The heat colours with their blending opacity (scaled to full) as alpha, RGBA PNG."""
    alpha = heat_alpha(heat, max_alpha=1.0)
    alpha[~(heat > HEAT_FLOOR)] = 0.0
    rgba = np.dstack([heat_colours(heat), np.rint(alpha * 255.0).astype(np.uint8)])
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(encoded.tobytes())

"""PNG/JPEG pictures -> grey image in ``[0, 1]``, the training path's counterpart of ``pixels``.

Colour is converted to grey with one formula (ITU-R BT.601 luma, as PIL's ``L`` mode and
OpenCV's ``COLOR_RGB2GRAY``), used by both the picture path and the DICOM path so that the same
picture gives the same model input whichever way it arrives.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFile, UnidentifiedImageError

#: BT.601 luma weights for R, G, B.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)

#: Refuse pictures larger than this many pixels before decoding them (decompression bombs).
MAX_PICTURE_PIXELS = 64_000_000


class PictureError(ValueError):
    """A picture file that cannot be read as an image."""


def rgb_to_grey(rgb: NDArray[np.generic]) -> NDArray[np.float64]:
    """Convert an ``H x W x 3`` RGB array to grey with BT.601 weights, in the input's units."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 array, got shape {rgb.shape}")
    grey: NDArray[np.float64] = rgb.astype(np.float64) @ LUMA_WEIGHTS
    return grey


def read_picture(source: str | Path | bytes) -> tuple[NDArray[np.float32], bool]:
    """Read a PNG or JPEG as grey float32 in ``[0, 1]``.

    Returns the image and whether it was truncated (the readable part is returned; the rest of
    a truncated JPEG is grey, as PIL fills it). Raises :class:`PictureError` for anything that is
    not a readable picture.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    truncated = False
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PICTURE_PIXELS:
                raise PictureError(f"picture of {img.width}x{img.height} pixels is too large")
            try:
                img.load()
            except OSError:
                # A truncated JPEG: load what is there, as a careful loader would, and say so.
                truncated = True
                previous = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = True
                try:
                    with Image.open(io.BytesIO(data)) as again, warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        again.load()
                        return _to_grey(again), truncated
                except OSError as exc:
                    raise PictureError(f"unreadable picture: {exc}") from exc
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = previous
            return _to_grey(img), truncated
    except UnidentifiedImageError as exc:
        raise PictureError("not a PNG or JPEG picture") from exc
    except Image.DecompressionBombError as exc:
        raise PictureError(str(exc)) from exc


def _to_grey(img: Image.Image) -> NDArray[np.float32]:
    """Pixel values of a PIL image as grey float32 in ``[0, 1]``."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return np.clip(arr / top, 0.0, 1.0).astype(np.float32)
    if mode == "L":
        return (np.asarray(img, dtype=np.float32) / 255.0).astype(np.float32)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    return (rgb_to_grey(rgb) / 255.0).astype(np.float32)

"""Grey radiograph -> model input: anatomy crop, letterbox resize, and the transform back.

Both paths end here: the service's DICOM path (``inference.pixels``) and the training path
(``training`` reading PNG/JPEG) produce a grey image with values in ``[0, 1]`` and bone bright,
and hand it to :func:`prepare`. Keeping the crop and resize in one pure function is what makes
"one picture, two paths" hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

FloatImage = NDArray[np.float32]

#: The crop is searched on a copy no larger than this (pixels, longest side): fast and stable.
_CROP_WORK_SIZE = 256
#: Margin kept around the detected anatomy, as a fraction of the crop's longest side.
_CROP_MARGIN = 0.03
#: A crop smaller than this fraction of the image area is not trusted (noise, a label, a marker).
_MIN_CROP_AREA_FRACTION = 0.10
#: Contours smaller than this fraction of the work image's area are ignored.
_MIN_CONTOUR_AREA_FRACTION = 0.002


@dataclass(frozen=True, slots=True)
class CropBox:
    """A rectangle in original pixel coordinates, ``[x0, x1) x [y0, y1)``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True, slots=True)
class GeometryTransform:
    """How a model-input pixel maps to the original pixel grid, and back.

    The model input is ``size x size``; the cropped region ``crop`` was scaled by ``scale`` and
    placed with its top-left corner at ``(pad_x, pad_y)`` (letterbox).
    """

    original_width: int
    original_height: int
    crop: CropBox
    scale: float
    pad_x: int
    pad_y: int
    size: int

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        """Map a point in model-input pixel coordinates to original pixel coordinates."""
        return (
            (x - self.pad_x) / self.scale + self.crop.x0,
            (y - self.pad_y) / self.scale + self.crop.y0,
        )

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        """Map a point in original pixel coordinates to model-input pixel coordinates."""
        return (
            (x - self.crop.x0) * self.scale + self.pad_x,
            (y - self.crop.y0) * self.scale + self.pad_y,
        )

    def rescaled_to(
        self, original_width: int, original_height: int, factor: float
    ) -> GeometryTransform:
        """The same transform expressed on a grid ``factor`` times larger.

        For an image prepared from a copy downscaled by ``factor`` (a JPEG 2000 frame decoded
        at a reduced resolution level, ``factor = 2**r``): the returned transform maps the same
        model input to the full ``original_width x original_height`` grid. The crop box is
        scaled outwards and clipped to that grid.
        """
        if factor <= 0:
            raise ValueError(f"factor must be positive, got {factor}")
        crop = CropBox(
            max(0, int(np.floor(self.crop.x0 * factor))),
            max(0, int(np.floor(self.crop.y0 * factor))),
            min(original_width, int(np.ceil(self.crop.x1 * factor))),
            min(original_height, int(np.ceil(self.crop.y1 * factor))),
        )
        return GeometryTransform(
            original_width=original_width,
            original_height=original_height,
            crop=crop,
            scale=self.scale / factor,
            pad_x=self.pad_x,
            pad_y=self.pad_y,
            size=self.size,
        )

    def content_box(self) -> CropBox:
        """The region of the model input covered by image content (not letterbox padding)."""
        return CropBox(
            self.pad_x,
            self.pad_y,
            self.pad_x + round(self.crop.width * self.scale),
            self.pad_y + round(self.crop.height * self.scale),
        )

    def map_to_original(self, model_map: FloatImage) -> FloatImage:
        """Resample a ``size x size`` map (a heat map) onto the original pixel grid.

        Outside the crop the result is 0; inside, the map's content region is resized with
        bilinear interpolation.
        """
        if model_map.shape[:2] != (self.size, self.size):
            model_map = np.asarray(
                cv2.resize(
                    model_map.astype(np.float32),
                    (self.size, self.size),
                    interpolation=cv2.INTER_LINEAR,
                ),
                dtype=np.float32,
            )
        box = self.content_box()
        content = model_map[box.y0 : box.y1, box.x0 : box.x1]
        out = np.zeros((self.original_height, self.original_width), dtype=np.float32)
        if content.size == 0:
            return out
        resized = cv2.resize(
            content.astype(np.float32),
            (self.crop.width, self.crop.height),
            interpolation=cv2.INTER_LINEAR,
        )
        out[self.crop.y0 : self.crop.y1, self.crop.x0 : self.crop.x1] = resized
        return out


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """The model input (``size x size x 1``, float32 in ``[0, 1]``) and its geometry."""

    tensor: FloatImage
    transform: GeometryTransform


def anatomy_crop(grey: FloatImage) -> CropBox:
    """Find the anatomy's bounding box, dropping an empty collimation border.

    Contour-based: on a small copy, Otsu threshold separates exposed anatomy from the dark
    (or uniformly bright, once inverted by the caller) border; the union of the large contours'
    bounding boxes, plus a margin, is the crop. When nothing convincing is found the whole image
    is returned, so the crop never removes anatomy it cannot see.
    """
    height, width = grey.shape[:2]
    full = CropBox(0, 0, width, height)
    if height < 16 or width < 16:
        return full
    factor = _CROP_WORK_SIZE / max(height, width)
    work: NDArray[np.floating] = grey
    if factor < 1.0:
        work_w, work_h = max(1, round(width * factor)), max(1, round(height * factor))
        work = np.asarray(cv2.resize(grey, (work_w, work_h), interpolation=cv2.INTER_AREA))
    else:
        factor = 1.0
    work8 = np.clip(np.rint(work * 255.0), 0, 255).astype(np.uint8)
    work8 = cv2.GaussianBlur(work8, (5, 5), 0)
    if int(work8.max()) - int(work8.min()) < 8:
        return full
    _, mask = cv2.threshold(work8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    min_area = _MIN_CONTOUR_AREA_FRACTION * work8.shape[0] * work8.shape[1]
    boxes = [cv2.boundingRect(c) for c in contours if cv2.contourArea(c) >= min_area]
    if not boxes:
        return full
    bx0 = min(b[0] for b in boxes)
    by0 = min(b[1] for b in boxes)
    bx1 = max(b[0] + b[2] for b in boxes)
    by1 = max(b[1] + b[3] for b in boxes)
    x0, y0 = bx0 / factor, by0 / factor
    x1, y1 = bx1 / factor, by1 / factor
    margin = _CROP_MARGIN * max(x1 - x0, y1 - y0)
    box = CropBox(
        max(0, int(np.floor(x0 - margin))),
        max(0, int(np.floor(y0 - margin))),
        min(width, int(np.ceil(x1 + margin))),
        min(height, int(np.ceil(y1 + margin))),
    )
    if box.width * box.height < _MIN_CROP_AREA_FRACTION * width * height:
        return full
    return box


def letterbox(grey: FloatImage, size: int, *, block: int = 1) -> tuple[FloatImage, float, int, int]:
    """Resize keeping the aspect ratio so the longest side is ``size``; pad with 0 to a square.

    ``grey`` may be an image averaged in ``block x block`` blocks (:func:`box_reduce`): the
    scale is then that of the original grid, and the content size is computed from the
    original crop's size with the very floating-point expression
    :meth:`GeometryTransform.content_box` uses, so the two always agree.
    Returns the square image, the scale factor and the padding offsets ``(pad_x, pad_y)``.
    """
    if size < 8:
        raise ValueError(f"model input size must be at least 8 px, got {size}")
    height, width = grey.shape[:2]
    scale = size / (block * max(height, width))
    new_w = min(size, max(1, round(block * width * scale)))
    new_h = min(size, max(1, round(block * height * scale)))
    interpolation = cv2.INTER_AREA if block * scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(grey.astype(np.float32), (new_w, new_h), interpolation=interpolation)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    out = np.zeros((size, size), dtype=np.float32)
    # Interpolation can overshoot [0, 1] by a rounding error; the model input never does.
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = np.clip(resized, 0.0, 1.0)
    return out, scale, pad_x, pad_y


def decimation_factor(height: int, width: int, size: int) -> int:
    """The whole factor by which :func:`prepare` box-averages an image before cropping.

    The largest ``k`` that leaves the long side at least ``2 * size`` (and the short side at
    least 16 px): a 2140 x 1760 radiograph is averaged in 3 x 3 blocks to 713 x 586 before the
    crop search and the letterbox resize, which are then cheap. Images whose long side is under
    ``4 * size`` (every FracAtlas picture at 320 px) are not decimated.
    """
    return max(1, min(max(height, width) // (2 * size), min(height, width) // 16))


def box_reduce(grey: FloatImage, factor: int) -> FloatImage:
    """The mean of each ``factor x factor`` block (a remainder under ``factor`` is dropped).

    OpenCV's area interpolation at a whole scale factor is exactly the block mean, computed
    in one pass; at a fractional factor (what a direct resize to the model's size is) it takes
    a slower general path, which is why :func:`prepare` reduces first.
    """
    if factor == 1:
        return grey
    height, width = grey.shape[0] // factor, grey.shape[1] // factor
    block = grey[: height * factor, : width * factor]
    return np.asarray(
        cv2.resize(block, (width, height), interpolation=cv2.INTER_AREA), dtype=np.float32
    )


def prepare(grey: FloatImage, size: int, *, crop: bool = True) -> PreparedImage:
    """Turn a grey image in ``[0, 1]`` (bone bright) into the model input and its geometry.

    A large image is first averaged in whole blocks (:func:`decimation_factor`,
    :func:`box_reduce`); the crop is searched and the letterbox resized on that copy, and the
    transform maps back to the full grid (the model never sees the under-``k`` remainder at
    the right and bottom edges, and the transform's crop excludes it).

    Parameters
    ----------
    grey:
        2-D float array, values in ``[0, 1]``; not modified.
    size:
        The model's square input size in pixels.
    crop:
        Apply the anatomy crop (the model card says whether its model was trained with it).
    """
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    if grey.shape[0] < 1 or grey.shape[1] < 1:
        raise ValueError(f"empty image, shape {grey.shape}")
    grey = grey.astype(np.float32, copy=False)
    if not (float(grey.min()) >= 0.0 and float(grey.max()) <= 1.0):  # also true for NaN
        grey = np.nan_to_num(np.clip(grey, 0.0, 1.0), nan=0.0)
    height, width = grey.shape
    factor = decimation_factor(height, width, size)
    work = box_reduce(grey, factor)
    found = anatomy_crop(work) if crop else CropBox(0, 0, work.shape[1], work.shape[0])
    region = work[found.y0 : found.y1, found.x0 : found.x1]
    square, scale, pad_x, pad_y = letterbox(region, size, block=factor)
    transform = GeometryTransform(
        original_width=width,
        original_height=height,
        crop=CropBox(found.x0 * factor, found.y0 * factor, found.x1 * factor, found.y1 * factor),
        scale=scale,
        pad_x=pad_x,
        pad_y=pad_y,
        size=size,
    )
    return PreparedImage(tensor=square[:, :, np.newaxis], transform=transform)

"""Fracture boxes (YOLO label files) and the masks the localisation head is trained on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from inference.preprocess import GeometryTransform

#: The folder beside a FracAtlas-style data set's class folders that holds the YOLO boxes.
YOLO_FOLDER = "yolo"


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in original pixel coordinates."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1

    def iou(self, other: Box) -> float:
        """Intersection over union with ``other`` (0 when either is empty)."""
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        inter = max(0.0, w) * max(0.0, h)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


def read_yolo_boxes(path: Path, width: int, height: int) -> list[Box]:
    """Boxes of a YOLO label file (``class xc yc w h``, normalised) in pixel coordinates."""
    if not path.is_file():
        return []
    boxes: list[Box] = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) != 5:
            continue
        xc, yc, w, h = (float(v) for v in fields[1:])
        boxes.append(
            Box(
                (xc - w / 2) * width,
                (yc - h / 2) * height,
                (xc + w / 2) * width,
                (yc + h / 2) * height,
            )
        )
    return boxes


def box_mask(boxes: Sequence[Box], transform: GeometryTransform) -> NDArray[np.uint8]:
    """A ``size x size`` mask (1 inside any box) on the model-input grid of ``transform``.

    Boxes are mapped through the anatomy crop and the letterbox, and clipped to the picture.
    """
    size = transform.size
    mask = np.zeros((size, size), dtype=np.uint8)
    for box in boxes:
        x0, y0 = transform.to_model(box.x0, box.y0)
        x1, y1 = transform.to_model(box.x1, box.y1)
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(size, int(np.ceil(x1))), min(size, int(np.ceil(y1)))
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = 1
    return mask


def yolo_path(yolo_dir: Path, picture: Path) -> Path:
    """The label file of a picture (same stem, ``.txt``)."""
    return yolo_dir / f"{picture.stem}.txt"

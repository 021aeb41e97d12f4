"""Suspected fracture regions from the localisation map: boxes with a probability each.

The model's localisation head gives, per cell of the model input, how likely the cell lies in a
fracture box. A positive image's regions are the connected areas of that map at or above half
its peak (searched inside the image content, not the letterbox padding), ranked by their own
peak; the top region is always reported, the others when their peak reaches
:data:`SECONDARY_RELATIVE_PEAK` of the top one, at most :data:`MAX_REGIONS`.

Each region's probability is the image's calibrated probability scaled by the region's peak
relative to the top region's, so the top region carries the image's probability and weaker
ones less. A region is reported at every operating point at which the image is positive:
regions at the high-specificity point are a subset of those at the high-sensitivity point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from inference.preprocess import GeometryTransform

#: A region is the connected area of the map at or above this fraction of the image's peak.
REGION_RELATIVE_LEVEL = 0.5
#: Regions other than the top one are reported when their peak reaches this share of its peak.
SECONDARY_RELATIVE_PEAK = 0.5
#: At most this many regions per image.
MAX_REGIONS = 3


@dataclass(frozen=True, slots=True)
class Region:
    """A suspected fracture: a box in original pixel coordinates ``[x0, x1] x [y0, y1]``."""

    x0: float
    y0: float
    x1: float
    y1: float
    #: Peak of the localisation map inside the region, ``[0, 1]``.
    score: float
    #: The image's calibrated probability scaled by ``score / top score``.
    probability: float
    #: Operating points (names) at which the region is reported.
    operating_points: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "x0": round(self.x0, 1),
            "y0": round(self.y0, 1),
            "x1": round(self.x1, 1),
            "y1": round(self.y1, 1),
            "score": round(self.score, 4),
            "probability": round(self.probability, 4),
            "operating_points": list(self.operating_points),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Region:
        points = data.get("operating_points", [])
        return cls(
            x0=float(data["x0"]),  # type: ignore[arg-type]
            y0=float(data["y0"]),  # type: ignore[arg-type]
            x1=float(data["x1"]),  # type: ignore[arg-type]
            y1=float(data["y1"]),  # type: ignore[arg-type]
            score=float(data["score"]),  # type: ignore[arg-type]
            probability=float(data["probability"]),  # type: ignore[arg-type]
            operating_points=tuple(str(p) for p in points),  # type: ignore[attr-defined]
        )

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


def candidate_boxes(
    heat: NDArray[np.float32], transform: GeometryTransform
) -> list[tuple[float, tuple[int, int, int, int]]]:
    """``(peak, (x0, y0, x1, y1))`` of each connected area at or above half the map's peak.

    ``heat`` is on the model-input grid (``size x size``); boxes are on that grid, half-open,
    inside the image content. Sorted by peak, highest first.
    """
    box = transform.content_box()
    content = heat[box.y0 : box.y1, box.x0 : box.x1]
    if content.size == 0:
        return []
    peak = float(content.max())
    if not np.isfinite(peak) or peak <= 0.0:
        return []
    mask = (content >= REGION_RELATIVE_LEVEL * peak).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    found: list[tuple[float, tuple[int, int, int, int]]] = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        region_peak = float(content[labels == label].max())
        found.append((region_peak, (x + box.x0, y + box.y0, x + w + box.x0, y + h + box.y0)))
    found.sort(key=lambda item: -item[0])
    return found


def find_regions(
    heat: NDArray[np.float32],
    transform: GeometryTransform,
    probability: float,
    positive_at: Sequence[str],
) -> tuple[Region, ...]:
    """The suspected fracture regions of one image (none when it is negative everywhere).

    ``positive_at`` names the operating points at which the image is positive.
    """
    if not positive_at:
        return ()
    candidates = candidate_boxes(heat, transform)
    if not candidates:
        return ()
    top = candidates[0][0]
    regions: list[Region] = []
    for peak, (bx0, by0, bx1, by1) in candidates[:MAX_REGIONS]:
        if regions and peak < SECONDARY_RELATIVE_PEAK * top:
            break
        x0, y0 = transform.to_original(bx0, by0)
        x1, y1 = transform.to_original(bx1, by1)
        w, h = transform.original_width, transform.original_height
        regions.append(
            Region(
                x0=float(np.clip(x0, 0, w)),
                y0=float(np.clip(y0, 0, h)),
                x1=float(np.clip(x1, 0, w)),
                y1=float(np.clip(y1, 0, h)),
                score=peak,
                probability=float(probability * peak / top),
                operating_points=tuple(positive_at),
            )
        )
    return tuple(regions)

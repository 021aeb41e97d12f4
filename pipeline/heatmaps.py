"""Stored Grad-CAM heat maps: the model-grid map plus the transform back to the original image.

One compressed ``.npz`` per analysed instance under ``<storage>/heatmaps/``. The result objects
(SC images) and the API's heatmap.png are rendered from these, never by re-running the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from dicom_node.storage import InstanceStore
from inference.preprocess import CropBox, GeometryTransform

_TRANSFORM_FIELDS = ("original_width", "original_height", "scale", "pad_x", "pad_y", "size")


def save_heatmap(
    store: InstanceStore,
    job_id: int,
    instance_id: int,
    heatmap: NDArray[np.float32],
    transform: GeometryTransform,
) -> str:
    """Write the map (values in [0, 1], model grid) and its transform; return the relative path."""
    folder = store.root / "heatmaps" / str(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{instance_id}.npz"
    crop = transform.crop
    np.savez_compressed(
        path,
        heatmap=np.clip(heatmap, 0.0, 1.0).astype(np.float16),
        transform=np.array(
            [
                transform.original_width,
                transform.original_height,
                transform.scale,
                transform.pad_x,
                transform.pad_y,
                transform.size,
            ],
            dtype=np.float64,
        ),
        crop=np.array([crop.x0, crop.y0, crop.x1, crop.y1], dtype=np.int64),
    )
    return str(path.relative_to(store.root))


def load_heatmap(
    store: InstanceStore, relative_path: str
) -> tuple[NDArray[np.float32], GeometryTransform]:
    """Read a stored heat map: the model-grid map and its transform."""
    path: Path = store.absolute(relative_path)
    with np.load(path) as data:
        heatmap = data["heatmap"].astype(np.float32)
        values = dict(zip(_TRANSFORM_FIELDS, data["transform"].tolist(), strict=True))
        x0, y0, x1, y1 = (int(v) for v in data["crop"].tolist())
    transform = GeometryTransform(
        original_width=int(values["original_width"]),
        original_height=int(values["original_height"]),
        crop=CropBox(x0, y0, x1, y1),
        scale=float(values["scale"]),
        pad_x=int(values["pad_x"]),
        pad_y=int(values["pad_y"]),
        size=int(values["size"]),
    )
    return heatmap, transform


def heatmap_on_original_grid(store: InstanceStore, relative_path: str) -> NDArray[np.float32]:
    """The stored heat map resampled onto the original image's pixel grid (Rows x Columns)."""
    heatmap, transform = load_heatmap(store, relative_path)
    return transform.map_to_original(heatmap)

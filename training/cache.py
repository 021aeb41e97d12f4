"""Preprocess pictures once into a uint8 array on disk, so that training epochs are cheap.

Each picture goes through exactly the service's chain (``read_picture`` -> ``prepare``); the
result is quantised to 8 bits and stored in a memory-mapped ``.npy`` file. Unreadable pictures
are reported and skipped, truncated ones are kept and reported: never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from inference.picture import PictureError, read_picture
from inference.preprocess import CropBox, GeometryTransform, prepare

log = logging.getLogger(__name__)

#: Bump when the preprocessing chain changes, so old caches are not reused.
CACHE_VERSION = 3
#: Columns of ``geometry.npy``: each picture's :class:`GeometryTransform` (NaN when unreadable).
GEOMETRY_COLUMNS = ("width", "height", "x0", "y0", "x1", "y1", "scale", "pad_x", "pad_y")


@dataclass(frozen=True, slots=True)
class PictureProblem:
    """A picture that was skipped (unreadable) or kept with a warning (truncated)."""

    path: str
    problem: str
    skipped: bool


@dataclass(frozen=True, slots=True)
class CachedImages:
    """Prepared images (``N x size x size`` uint8), which of them loaded, and the problems met."""

    images: NDArray[np.uint8]
    loaded: NDArray[np.bool_]
    problems: tuple[PictureProblem, ...]
    #: ``N x 9`` geometry of each prepared picture (:data:`GEOMETRY_COLUMNS`), to map boxes.
    geometry: NDArray[np.float64]

    def transform(self, index: int) -> GeometryTransform:
        """The geometry of picture ``index`` (original pixels <-> model input)."""
        return transform_from_row(self.geometry[index], self.images.shape[1])

    def as_float(self, indices: NDArray[np.intp] | None = None) -> NDArray[np.float32]:
        """Images as ``N x size x size x 1`` float32 in ``[0, 1]`` (the model input)."""
        chosen = self.images if indices is None else self.images[indices]
        return (chosen.astype(np.float32) / 255.0)[..., np.newaxis]


def quantise(tensor: NDArray[np.float32]) -> NDArray[np.uint8]:
    """A ``[0, 1]`` image to 8 bits, rounding to nearest."""
    out: NDArray[np.uint8] = np.clip(np.rint(tensor * 255.0), 0, 255).astype(np.uint8)
    return out


def geometry_row(t: GeometryTransform) -> NDArray[np.float64]:
    """A transform as one row of ``geometry.npy``."""
    c = t.crop
    values = (
        t.original_width,
        t.original_height,
        c.x0,
        c.y0,
        c.x1,
        c.y1,
        t.scale,
        t.pad_x,
        t.pad_y,
    )
    return np.array(values, dtype=np.float64)


def transform_from_row(row: NDArray[np.float64], size: int) -> GeometryTransform:
    """The inverse of :func:`geometry_row`."""
    w, h, x0, y0, x1, y1, scale, pad_x, pad_y = (float(v) for v in row)
    return GeometryTransform(
        original_width=int(w),
        original_height=int(h),
        crop=CropBox(int(x0), int(y0), int(x1), int(y1)),
        scale=scale,
        pad_x=int(pad_x),
        pad_y=int(pad_y),
        size=size,
    )


PreparedFile = tuple[NDArray[np.uint8] | None, NDArray[np.float64] | None, str | None]


def prepare_file(path: Path, size: int, crop: bool) -> PreparedFile:
    """Read and prepare one picture; returns ``(image or None, geometry or None, problem)``."""
    try:
        grey, truncated = read_picture(path)
        prepared = prepare(grey, size, crop=crop)
        image = quantise(prepared.tensor[:, :, 0])
    except (PictureError, OSError, ValueError) as exc:
        return None, None, f"unreadable: {exc}"
    return image, geometry_row(prepared.transform), ("truncated" if truncated else None)


def _prepare_job(job: tuple[str, int, bool]) -> PreparedFile:
    return prepare_file(Path(job[0]), job[1], job[2])


def cache_key(paths: Sequence[Path], size: int, crop: bool) -> str:
    """A key that changes with the file list, the size, the crop and the cache version."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{size}:{crop}".encode())
    for path in paths:
        stat = path.stat() if path.exists() else None
        digest.update(f"{path}:{stat.st_size if stat else -1}\n".encode())
    return digest.hexdigest()[:16]


def build_cache(
    paths: Sequence[Path], size: int, *, crop: bool, cache_dir: Path, workers: int = 2
) -> CachedImages:
    """Prepare ``paths`` into ``cache_dir/<key>/``, or reuse what is there."""
    folder = cache_dir / cache_key(paths, size, crop)
    images_file, status_file = folder / "images.npy", folder / "status.json"
    geometry_file = folder / "geometry.npy"
    if images_file.is_file() and status_file.is_file() and geometry_file.is_file():
        status = json.loads(status_file.read_text())
        images = np.load(images_file, mmap_mode="r")
        return CachedImages(
            images=images,
            loaded=np.asarray(status["loaded"], dtype=bool),
            problems=tuple(PictureProblem(**p) for p in status["problems"]),
            geometry=np.load(geometry_file),
        )
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "images.partial.npy"
    array = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.uint8, shape=(len(paths), size, size)
    )
    loaded = np.zeros(len(paths), dtype=bool)
    geometry = np.full((len(paths), len(GEOMETRY_COLUMNS)), np.nan, dtype=np.float64)
    problems: list[PictureProblem] = []
    jobs = [(str(p), size, crop) for p in paths]
    log.info("preparing %d pictures at %d px into %s", len(paths), size, folder)
    if workers > 1 and len(jobs) > 8:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_prepare_job, jobs, chunksize=16))
    else:
        results = [_prepare_job(job) for job in jobs]
    for index, (image, row, problem) in enumerate(results):
        if image is not None and row is not None:
            array[index] = image
            geometry[index] = row
            loaded[index] = True
        if problem is not None:
            problems.append(PictureProblem(str(paths[index]), problem, skipped=image is None))
            log.warning("%s: %s", paths[index].name, problem)
    array.flush()
    del array
    partial.replace(images_file)
    np.save(geometry_file, geometry)
    status_file.write_text(
        json.dumps(
            {
                "loaded": loaded.tolist(),
                "problems": [
                    {"path": p.path, "problem": p.problem, "skipped": p.skipped} for p in problems
                ],
            }
        )
    )
    return CachedImages(np.load(images_file, mmap_mode="r"), loaded, tuple(problems), geometry)

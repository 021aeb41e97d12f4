"""From a data folder to a trained model: load, split, cache, train (``train``'s core)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from inference.preprocess import GeometryTransform
from training.boxes import YOLO_FOLDER, box_mask, read_yolo_boxes, yolo_path
from training.cache import CachedImages, PictureProblem, build_cache, transform_from_row
from training.datasets import (
    Dataset,
    Example,
    Split,
    Splits,
    describe,
    load_dataset,
    split_examples,
)
from training.fit import BEST_MODEL, RunState, TrainConfig, train_model

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
DATA_FILE = "data.json"


@dataclass(frozen=True, slots=True)
class PreparedSplit:
    """One split's loaded examples (unreadable ones dropped) with their cached pixels."""

    examples: tuple[Example, ...]
    images: NDArray[np.uint8]
    labels: NDArray[np.int64]
    #: Fracture-box masks on the model grid (``N x size x size``, 1 inside a box), when the
    #: data set has boxes; ``has_boxes`` says which pictures have a label file with boxes.
    masks: NDArray[np.uint8] | None = None
    has_boxes: NDArray[np.bool_] | None = None
    #: Each picture's geometry row (``training.cache.transform_from_row``): where its content
    #: lies on the model grid.
    geometry: NDArray[np.float64] | None = None

    def transform(self, index: int) -> GeometryTransform:
        """The geometry of picture ``index`` of this split (original pixels <-> model input)."""
        if self.geometry is None:
            raise ValueError("this split was prepared without its geometry")
        return transform_from_row(self.geometry[index], int(self.images.shape[1]))

    def positive(self, positive_index: int) -> NDArray[np.int64]:
        """0/1 labels, 1 for the positive class."""
        binary: NDArray[np.int64] = (self.labels == positive_index).astype(np.int64)
        return binary


@dataclass(frozen=True, slots=True)
class PreparedData:
    """A data set, its split and every split's pixels, plus the pictures that had problems."""

    dataset: Dataset
    splits: Splits
    parts: dict[Split, PreparedSplit]
    problems: tuple[PictureProblem, ...]


def default_cache_dir(out: Path) -> Path:
    """Caches live next to the run folders (``runs/cache`` for ``runs/<name>``)."""
    return out.parent / "cache"


def prepare_data(
    data: Path,
    *,
    image_size: int,
    crop: bool,
    seed: int,
    cache_dir: Path,
    positive: str | None = None,
    workers: int = 2,
) -> PreparedData:
    """Load, split and cache a data set; pictures that cannot be read are reported and dropped."""
    dataset = load_dataset(data, positive=positive)
    splits = split_examples(dataset, seed=seed)
    everything = [e.path for e in dataset.examples]
    cached: CachedImages = build_cache(
        everything, image_size, crop=crop, cache_dir=cache_dir, workers=workers
    )
    where = {path: index for index, path in enumerate(everything)}
    parts: dict[Split, PreparedSplit] = {}
    for split in Split:
        kept = [e for e in splits.part(split) if cached.loaded[where[e.path]]]
        rows = np.array([where[e.path] for e in kept], dtype=np.intp)
        images = (
            np.asarray(cached.images[rows])
            if len(rows)
            else np.zeros((0, image_size, image_size), dtype=np.uint8)
        )
        masks, has_boxes = _masks(kept, rows, cached, dataset.root / YOLO_FOLDER)
        parts[split] = PreparedSplit(
            tuple(kept),
            images,
            np.array([e.label for e in kept], dtype=np.int64),
            masks,
            has_boxes,
            np.asarray(cached.geometry[rows], dtype=np.float64),
        )
    for problem in cached.problems:
        log.warning(
            "%s: %s (%s)",
            Path(problem.path).name,
            problem.problem,
            "skipped" if problem.skipped else "kept",
        )
    return PreparedData(dataset, splits, parts, cached.problems)


def _masks(
    kept: list[Example], rows: NDArray[np.intp], cached: CachedImages, yolo_dir: Path
) -> tuple[NDArray[np.uint8] | None, NDArray[np.bool_] | None]:
    """Box masks for the kept examples, or ``(None, None)`` when the data set has no boxes."""
    if not yolo_dir.is_dir():
        return None, None
    size = int(cached.images.shape[1])
    masks = np.zeros((len(kept), size, size), dtype=np.uint8)
    has_boxes = np.zeros(len(kept), dtype=bool)
    for i, (example, row) in enumerate(zip(kept, rows, strict=True)):
        transform = cached.transform(int(row))
        boxes = read_yolo_boxes(
            yolo_path(yolo_dir, example.path), transform.original_width, transform.original_height
        )
        if boxes:
            masks[i] = box_mask(boxes, transform)
            has_boxes[i] = bool(masks[i].any())
    return masks, has_boxes


def record_data(prepared: PreparedData, out: Path) -> None:
    """Write the split's file lists and a summary of the data (with its problems) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    root = prepared.dataset.root
    (out / SPLIT_FILE).write_text(json.dumps(prepared.splits.to_json(root), indent=1) + "\n")
    summary = describe(prepared.dataset, prepared.splits) | {
        "problems": [
            {"file": Path(p.path).name, "problem": p.problem, "skipped": p.skipped}
            for p in prepared.problems
        ]
    }
    (out / DATA_FILE).write_text(json.dumps(summary, indent=1) + "\n")


def train_stage(
    data: Path,
    config: TrainConfig,
    out: Path,
    *,
    cache_dir: Path | None = None,
    positive: str | None = None,
) -> tuple[PreparedData, RunState]:
    """Prepare the data and train (or resume) into ``out``; ``out/best.keras`` is the model."""
    prepared = prepare_data(
        data,
        image_size=config.image_size,
        crop=config.crop,
        seed=config.seed,
        cache_dir=cache_dir or default_cache_dir(out),
        positive=positive,
    )
    record_data(prepared, out)
    train, val = prepared.parts[Split.TRAIN], prepared.parts[Split.VAL]
    log.info(
        "train %s, val %s",
        prepared.dataset.counts(train.examples),
        prepared.dataset.counts(val.examples),
    )
    state = train_model(
        config,
        train_images=train.images,
        train_labels=train.labels,
        val_images=val.images,
        val_labels=val.labels,
        train_masks=train.masks,
        train_has_boxes=train.has_boxes,
        class_names=prepared.dataset.class_names,
        positive_index=prepared.dataset.positive_index,
        folder=out,
    )
    if not (out / BEST_MODEL).is_file():
        raise RuntimeError(f"training in {out} produced no {BEST_MODEL}")
    return prepared, state

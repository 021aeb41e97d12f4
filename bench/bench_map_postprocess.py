"""Where the fracture map's peak falls under different read-outs of the same model (run by hand).

For the fractured pictures with boxes that a package calls positive at its high-sensitivity
point, in the validation and test parts of its ``split.json``, computes the share whose map
peak lies inside an annotated box (the figure of docs/MODEL.md's localisation target) when the
map is read out

* as the service does (``raw``: bilinear resize of the coarse map, peak over the content);
* after a Gaussian blur of the coarse map (``sigma`` in map cells);
* averaged (``flip-mean``) or maximised (``flip-max``) with the map of the horizontally
  flipped picture, flipped back (test-time augmentation: a second forward pass).

The classifier's probability is the unflipped pass's in every case. Choose on validation;
the test column is for honesty, not for choosing.

    .venv/bin/python bench/bench_map_postprocess.py models/fracture-lite0 \\
        --data ../shared/data/fracatlas
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.gradcam import resize_map
from inference.model_package import OperatingPointName, load_package
from inference.picture import read_picture
from inference.predictor import Predictor
from inference.preprocess import GeometryTransform, prepare
from training.boxes import YOLO_FOLDER, Box, read_yolo_boxes, yolo_path

Map = np.ndarray
Row = tuple[Map, Map, GeometryTransform, list[Box]]

READ_OUTS: dict[str, Callable[[Map, Map], Map]] = {
    "raw": lambda plain, flipped: plain,
    "flip-mean": lambda plain, flipped: (plain + flipped) / 2,
    "flip-max": lambda plain, flipped: np.maximum(plain, flipped),
}
SIGMAS = (0.0, 0.7, 1.0, 1.5, 2.0)


def true_positive_maps(predictor: Predictor, root: Path, names: list[str]) -> list[Row]:
    """Coarse maps (plain and flipped back) of the positive fractured pictures with boxes."""
    card = predictor.card
    threshold = card.operating_points[OperatingPointName.HIGH_SENSITIVITY].threshold
    rows: list[Row] = []
    for name in names:
        path = root / name
        grey, _ = read_picture(path)
        image = prepare(grey, card.input_size, crop=card.preprocessing.crop)
        t = image.transform
        boxes = read_yolo_boxes(
            yolo_path(root / YOLO_FOLDER, path), t.original_width, t.original_height
        )
        if not boxes:
            continue
        x = np.clip(image.tensor, 0.0, 1.0)[None].astype(np.float32)
        scores, plain = predictor.scores_and_maps(x)
        if float(card.calibration.apply(scores)[0]) < threshold:
            continue
        _, flipped = predictor.scores_and_maps(np.ascontiguousarray(x[:, :, ::-1, :]))
        rows.append((plain[0], flipped[0][:, ::-1], t, boxes))
    return rows


def peak_in_box(coarse: Map, size: int, t: GeometryTransform, boxes: list[Box]) -> bool:
    """Whether the map's peak over the image content lies inside an annotated box."""
    heat = resize_map(coarse.astype(np.float32), size)
    box = t.content_box()
    content = heat[box.y0 : box.y1, box.x0 : box.x1]
    y, x = np.unravel_index(int(np.argmax(content)), content.shape)
    ox, oy = t.to_original(x + box.x0 + 0.5, y + box.y0 + 0.5)
    return any(b.contains(ox, oy) for b in boxes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    predictor = Predictor(load_package(args.package))
    split = json.loads((args.package / "evaluation" / "split.json").read_text())
    size = predictor.card.input_size
    parts = {
        part: true_positive_maps(
            predictor, args.data, [n for n in split[part] if "/Fractured/" in n]
        )
        for part in ("val", "test")
    }
    print("| read-out | sigma | validation | test |")
    print("|---|---|---|---|")
    for name, combine in READ_OUTS.items():
        for sigma in SIGMAS:
            cells = []
            for rows in parts.values():
                hits = 0
                for plain, flipped, t, boxes in rows:
                    coarse = combine(plain, flipped).astype(np.float32)
                    if sigma:
                        coarse = np.asarray(cv2.GaussianBlur(coarse, (0, 0), sigma), np.float32)
                    hits += peak_in_box(coarse, size, t, boxes)
                cells.append(f"{hits}/{len(rows)} = {hits / len(rows):.3f}")
            print(f"| {name} | {sigma} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()

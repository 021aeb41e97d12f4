"""Evaluate a model package on labelled pictures: metrics, figures, Markdown report, predictions.

Pictures go through the service's own path (``read_picture`` -> ``prepare`` -> ``Predictor``),
so the numbers describe what the service does, Grad-CAM included.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from inference.model_package import ModelCard, OperatingPointName, load_package
from inference.picture import PictureError, read_picture
from inference.predictor import Predictor
from inference.preprocess import prepare
from inference.regions import Region
from training.boxes import YOLO_FOLDER, Box, read_yolo_boxes, yolo_path
from training.datasets import Example
from training.metrics import (
    Confusion,
    auroc,
    bootstrap_auroc_ci,
    brier_score,
    confusion_at,
    expected_calibration_error,
    wilson_interval,
)
from training.plots import plot_calibration, plot_confusion, plot_roc

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
REPORT_FILE = "report.md"


@dataclass(frozen=True, slots=True)
class ScoredImage:
    """One evaluated picture."""

    example: Example
    positive: bool
    score: float
    probability: float
    #: Heat-map peak in original pixel coordinates, and the original size ``(width, height)``.
    peak: tuple[float, float]
    original_size: tuple[int, int]
    #: Suspected fracture regions the service would report (localisation models only).
    regions: tuple[Region, ...] = ()


def score_examples(
    predictor: Predictor, examples: Sequence[Example], positive_index: int, *, batch_size: int = 16
) -> tuple[list[ScoredImage], list[str]]:
    """Predict every readable picture; returns the results and the names of skipped pictures."""
    card = predictor.card
    scored: list[ScoredImage] = []
    skipped: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch, prepared = [], []
        for example in examples[start : start + batch_size]:
            try:
                grey, _ = read_picture(example.path)
            except (PictureError, OSError) as exc:
                log.warning("%s skipped: %s", example.path.name, exc)
                skipped.append(example.path.name)
                continue
            prepared.append(prepare(grey, card.input_size, crop=card.preprocessing.crop))
            batch.append(example)
        for example, image, result in zip(
            batch, prepared, predictor.predict(prepared, batch_size=batch_size), strict=True
        ):
            scored.append(
                ScoredImage(
                    example=example,
                    positive=example.label == positive_index,
                    score=result.score,
                    probability=result.probability,
                    peak=result.peak_on_original(),
                    original_size=(image.transform.original_width, image.transform.original_height),
                    regions=result.regions,
                )
            )
    return scored, skipped


def _clean(value: float) -> float | None:
    """NaN (undefined, e.g. no positives) becomes JSON null."""
    return None if math.isnan(value) else round(value, 6)


def _interval(successes: int, total: int) -> list[float | None]:
    low, high = wilson_interval(successes, total)
    return [_clean(low), _clean(high)]


def confusion_metrics(c: Confusion) -> dict[str, Any]:
    """The threshold-dependent metrics of one confusion matrix, with 95 % Wilson intervals."""
    return {
        "accuracy": _clean(c.accuracy),
        "precision": _clean(c.precision),
        "sensitivity": _clean(c.sensitivity),
        "sensitivity_ci": _interval(c.tp, c.tp + c.fn),
        "recall": _clean(c.sensitivity),
        "specificity": _clean(c.specificity),
        "specificity_ci": _interval(c.tn, c.tn + c.fp),
        "f1": _clean(c.f1),
        "kappa": _clean(c.kappa),
        "confusion_matrix": c.as_matrix(),
    }


#: A reported region finds an annotated box when their IoU reaches this, or when the region's
#: centre lies inside the box.
MATCH_IOU = 0.3


def region_matches(region: Region, box: Box) -> bool:
    """Whether a reported region finds an annotated box (IoU >= 0.3 or centre inside)."""
    as_box = Box(region.x0, region.y0, region.x1, region.y1)
    return as_box.iou(box) >= MATCH_IOU or box.contains(*region.centre)


def _boxes_of(image: ScoredImage, yolo_dir: Path) -> list[Box]:
    width, height = image.original_size
    return read_yolo_boxes(yolo_path(yolo_dir, image.example.path), width, height)


def box_detection(
    scored: Sequence[ScoredImage], point: OperatingPointName, yolo_dir: Path
) -> dict[str, Any]:
    """Box recall and precision of the regions reported at one operating point.

    ``recall_true_positives``: annotated boxes found, among the images positive at the point;
    ``recall_all``: among every fractured image with boxes (missed images find none);
    ``precision``: reported regions on fractured images that find a box; and the mean number
    of regions on images without a fracture (false marks a reader would see).
    """
    found_tp = boxes_tp = found_all = boxes_all = 0
    regions_pos = regions_matched = 0
    regions_neg = negatives = 0
    for image in scored:
        shown = [r for r in image.regions if point.value in r.operating_points]
        if not image.positive:
            negatives += 1
            regions_neg += len(shown)
            continue
        boxes = _boxes_of(image, yolo_dir)
        if not boxes:
            continue
        found = sum(any(region_matches(r, box) for r in shown) for box in boxes)
        boxes_all += len(boxes)
        found_all += found
        if shown:
            boxes_tp += len(boxes)
            found_tp += found
        regions_pos += len(shown)
        regions_matched += sum(any(region_matches(r, box) for box in boxes) for r in shown)
    return {
        "boxes_in_true_positives": boxes_tp,
        "recall_true_positives": _clean(found_tp / boxes_tp if boxes_tp else float("nan")),
        "boxes_all": boxes_all,
        "recall_all": _clean(found_all / boxes_all if boxes_all else float("nan")),
        "regions_on_fractured": regions_pos,
        "precision": _clean(regions_matched / regions_pos if regions_pos else float("nan")),
        "regions_per_negative_image": _clean(
            regions_neg / negatives if negatives else float("nan")
        ),
    }


def localisation(
    scored: Sequence[ScoredImage], threshold: float, yolo_dir: Path, *, localising: bool = False
) -> dict[str, Any]:
    """Where the map points, on the true positives (high-sensitivity point) with boxes.

    ``share``: the map's peak lies inside an annotated box; ``top_region_share``: the top
    reported region finds a box (IoU >= 0.3 or centre inside); and, per operating point, the
    box recall and precision of the reported regions (:func:`box_detection`), for a model
    that reports regions (``localising``).
    """
    hits = total = top_hits = 0
    box_fraction = 0.0
    for image in scored:
        if not (image.positive and image.probability >= threshold):
            continue
        width, height = image.original_size
        boxes = _boxes_of(image, yolo_dir)
        if not boxes:
            continue
        total += 1
        hits += any(box.contains(*image.peak) for box in boxes)
        if image.regions:
            top_hits += any(region_matches(image.regions[0], box) for box in boxes)
        box_fraction += min(1.0, sum(box.area for box in boxes) / (width * height))
    result: dict[str, Any] = {
        "true_positives_with_boxes": total,
        "peak_in_box": hits,
        "share": _clean(hits / total if total else float("nan")),
        # What a peak placed uniformly at random would reach: the boxes' mean area fraction.
        "chance_share": _clean(box_fraction / total if total else float("nan")),
    }
    if localising:
        result["top_region_in_box"] = top_hits
        result["top_region_share"] = _clean(top_hits / total if total else float("nan"))
        result["boxes"] = {
            point.value: box_detection(scored, point, yolo_dir) for point in OperatingPointName
        }
    return result


def compute_metrics(
    scored: Sequence[ScoredImage], card: ModelCard, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """All metrics of a set of scored pictures (see ``metrics.json``)."""
    labels = np.array([s.positive for s in scored], dtype=bool)
    probabilities = np.array([s.probability for s in scored], dtype=np.float64)
    value = auroc(labels, probabilities)
    low, high = bootstrap_auroc_ci(labels, probabilities, n_boot=n_boot, seed=seed)
    points: dict[str, Any] = {}
    for name, point in card.operating_points.items():
        reached = confusion_at(labels, probabilities, point.threshold)
        points[name.value] = {"threshold": point.threshold} | confusion_metrics(reached)
    body: dict[str, Any] = {}
    parts = sorted({s.example.body_part for s in scored if s.example.body_part})
    for part in parts:
        pick = np.array([s.example.body_part == part for s in scored])
        body[part] = {
            "n_images": int(pick.sum()),
            "n_positive": int(labels[pick].sum()),
            "auroc": _clean(auroc(labels[pick], probabilities[pick])),
        }
        for name, point in card.operating_points.items():
            reached = confusion_at(labels[pick], probabilities[pick], point.threshold)
            body[part][name.value] = {
                "sensitivity": _clean(reached.sensitivity),
                "specificity": _clean(reached.specificity),
            }
    return {
        "model": {"name": card.name, "version": card.version, "sha256": card.sha256},
        "n_images": int(labels.size),
        "n_positive": int(labels.sum()),
        "auroc": _clean(value),
        "auroc_ci": [_clean(low), _clean(high)],
        "auroc_ci_level": 0.95,
        "kappa": points[OperatingPointName.HIGH_SENSITIVITY.value]["kappa"],
        "operating_points": points,
        "at_probability_0_5": confusion_metrics(confusion_at(labels, probabilities, 0.5)),
        "calibration": {
            "ece": _clean(expected_calibration_error(labels, probabilities)),
            "ece_bins": 10,
            "brier": _clean(brier_score(labels, probabilities)),
        },
        "body_parts": body,
    }


def write_predictions(scored: Sequence[ScoredImage], root: Path, path: Path) -> None:
    """``predictions.csv``: file (relative to the data root), label (1 = positive), probability."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "probability", "score"])
        for s in scored:
            name = (
                s.example.path.relative_to(root)
                if s.example.path.is_relative_to(root)
                else s.example.path.name
            )
            row = [str(name), int(s.positive), f"{s.probability:.6f}", f"{s.score:.6f}"]
            writer.writerow(row)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def write_report(metrics: dict[str, Any], card: ModelCard, title: str, path: Path) -> None:
    """A Markdown report of ``metrics`` with the figures beside it."""
    low, high = metrics["auroc_ci"]
    lines = [
        f"# {title}",
        "",
        f"Model `{card.name}` {card.version} (sha256 `{card.sha256[:16]}...`), "
        f"input {card.input_size} px, crop {'on' if card.preprocessing.crop else 'off'}.",
        "",
        f"- images: {metrics['n_images']} ({metrics['n_positive']} fractured)",
        f"- AUROC: {_fmt(metrics['auroc'])} (95% bootstrap CI {_fmt(low)} to {_fmt(high)})",
        "",
        "## Operating points (thresholds fitted on the validation split)",
        "",
        "| point | threshold | sensitivity (95% Wilson CI) | specificity (95% Wilson CI) "
        "| precision | accuracy | F1 | kappa |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics["operating_points"].items():
        sl, sh = m["sensitivity_ci"]
        pl, ph = m["specificity_ci"]
        lines.append(
            f"| {name} | {m['threshold']:.4f} | {_fmt(m['sensitivity'])} ({_fmt(sl)}-{_fmt(sh)}) "
            f"| {_fmt(m['specificity'])} ({_fmt(pl)}-{_fmt(ph)}) | {_fmt(m['precision'])} | "
            f"{_fmt(m['accuracy'])} | {_fmt(m['f1'])} | {_fmt(m['kappa'])} |"
        )
    calibration = metrics.get("calibration")
    if calibration:
        lines += [
            "",
            f"Calibration: expected calibration error {_fmt(calibration['ece'])} "
            f"({calibration['ece_bins']} equal-width bins), Brier score "
            f"{_fmt(calibration['brier'])}; reliability plot in `calibration.png`.",
        ]
    lines += ["", "Confusion matrices `[[TN, FP], [FN, TP]]`: "]
    lines += [f"- {n}: {m['confusion_matrix']}" for n, m in metrics["operating_points"].items()]
    if metrics["body_parts"]:
        lines += [
            "",
            "## Per body part",
            "",
            "| part | images | fractured | AUROC | sens (high-sens) | spec (high-sens) |",
            "|---|---|---|---|---|---|",
        ]
        for part, m in metrics["body_parts"].items():
            hs = m[OperatingPointName.HIGH_SENSITIVITY.value]
            lines.append(
                f"| {part} | {m['n_images']} | {m['n_positive']} | {_fmt(m['auroc'])} | "
                f"{_fmt(hs['sensitivity'])} | {_fmt(hs['specificity'])} |"
            )
    if "localisation" in metrics:
        loc = metrics["localisation"]
        lines += [
            "",
            "## Localisation",
            "",
            f"Of {loc['true_positives_with_boxes']} true positives (high-sensitivity point) "
            f"with annotated boxes, {loc['peak_in_box']} have the map's peak inside a "
            f"box: share {_fmt(loc['share'])} (a peak placed at random would land in a box "
            f"{_fmt(loc['chance_share'])} of the time).",
        ]
        if "boxes" in loc:
            lines += [
                f"The top reported region finds a box (IoU >= {MATCH_IOU} or centre inside) "
                f"for {loc['top_region_in_box']}: share {_fmt(loc['top_region_share'])}.",
                "",
                "| point | box recall (true positives) | box recall (all fractured) | "
                "region precision | regions per normal image |",
                "|---|---|---|---|---|",
            ]
            for name, b in loc["boxes"].items():
                lines.append(
                    f"| {name} | {_fmt(b['recall_true_positives'])} "
                    f"({b['boxes_in_true_positives']} boxes) | {_fmt(b['recall_all'])} "
                    f"({b['boxes_all']} boxes) | {_fmt(b['precision'])} | "
                    f"{_fmt(b['regions_per_negative_image'])} |"
                )
    if metrics.get("skipped"):
        lines += ["", f"Skipped (unreadable): {', '.join(metrics['skipped'])}"]
    lines += ["", "![ROC](roc.png) ![calibration](calibration.png)", ""]
    lines += [f"![{n}](confusion_{n}.png)" for n in metrics["operating_points"]]
    path.write_text("\n".join(lines) + "\n")


def evaluate(
    package: Path,
    examples: Sequence[Example],
    positive_index: int,
    out: Path,
    *,
    data_root: Path,
    title: str = "Evaluation",
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Evaluate ``package`` on ``examples``: metrics.json, predictions.csv, report.md and PNGs."""
    loaded = load_package(package)
    card = loaded.card
    predictor = Predictor(loaded)
    scored, skipped = score_examples(predictor, examples, positive_index)
    if not scored:
        raise ValueError("no readable pictures to evaluate")
    metrics = compute_metrics(scored, card, n_boot=n_boot)
    metrics["skipped"] = skipped
    yolo = data_root / YOLO_FOLDER
    if yolo.is_dir():
        threshold = card.operating_points[OperatingPointName.HIGH_SENSITIVITY].threshold
        metrics["localisation"] = localisation(
            scored, threshold, yolo, localising=card.localisation_layer is not None
        )
    out.mkdir(parents=True, exist_ok=True)
    labels: NDArray[np.bool_] = np.array([s.positive for s in scored])
    probabilities = np.array([s.probability for s in scored])
    plot_roc(
        labels,
        probabilities,
        {
            n: (m["sensitivity"] or 0.0, m["specificity"] or 0.0)
            for n, m in metrics["operating_points"].items()
        },
        f"ROC, AUROC {_fmt(metrics['auroc'])}",
        out / "roc.png",
    )
    plot_calibration(
        labels, np.array([s.score for s in scored]), probabilities, out / "calibration.png"
    )
    for name, point in card.operating_points.items():
        plot_confusion(
            confusion_at(labels, probabilities, point.threshold),
            f"{name.value} (p >= {point.threshold:.3f})",
            out / f"confusion_{name.value}.png",
        )
    write_predictions(scored, data_root, out / PREDICTIONS_FILE)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")
    write_report(metrics, card, title, out / REPORT_FILE)
    return metrics


def operating_point_dicts(card: ModelCard) -> dict[str, dict[str, Any]]:
    """The card's operating points as plain dicts."""
    return {n.value: asdict(p) for n, p in card.operating_points.items()}

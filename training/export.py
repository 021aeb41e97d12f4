"""Trained model -> model package, with calibration and operating points fitted on validation."""

from __future__ import annotations

import datetime as dt
import json
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from inference.model_package import (
    ModelCard,
    OutputKind,
    Preprocessing,
    write_package,
)
from inference.scope import FRACATLAS_BODY_PARTS
from training.architectures import GRADCAM_LAYER, LOCALISATION_LAYER
from training.calibration import fit_platt, operating_points
from training.datasets import Split, describe
from training.fit import BEST_MODEL, positive_scores
from training.metrics import auroc
from training.pipeline import PreparedData, PreparedSplit

#: Default version of an exported package (the name defaults to the model's).
DEFAULT_VERSION = "1.0.0"


def load_trained(model: Path) -> keras.Model:
    """A trained model from a ``.keras`` file or a run folder (its ``best.keras``)."""
    path = model / BEST_MODEL if model.is_dir() else model
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {str(path)!r}")
    loaded: keras.Model = keras.models.load_model(path, compile=False)
    return loaded


def model_input_size(model: keras.Model) -> int:
    """The square input size of a grey model (``None x s x s x 1``)."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1 or shape[1] is None:
        raise ValueError(f"expected a model input of shape (None, s, s, 1), got {shape}")
    return int(shape[1])


def split_scores(model: keras.Model, part: PreparedSplit, positive_index: int) -> np.ndarray:
    """Raw positive-class scores of a model on a prepared split."""
    x = (part.images.astype(np.float32) / 255.0)[..., np.newaxis]
    outputs = model.predict(x, batch_size=32, verbose=0)
    return np.asarray(positive_scores(outputs, positive_index), dtype=np.float64)


def framework_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def default_scope(prepared: PreparedData) -> tuple[str, ...]:
    """The FracAtlas regions for a data set with FracAtlas body parts, else no stated scope."""
    parts = {e.body_part for e in prepared.dataset.examples if e.body_part}
    return FRACATLAS_BODY_PARTS if parts & {"hand", "leg", "hip", "shoulder"} else ()


def export_package(
    model: keras.Model,
    prepared: PreparedData,
    out: Path,
    *,
    crop: bool,
    name: str | None = None,
    version: str = DEFAULT_VERSION,
    training: dict[str, Any] | None = None,
    body_parts: tuple[str, ...] | None = None,
) -> ModelCard:
    """Calibrate on the validation split, choose operating points, and write the package.

    ``body_parts`` is the model's scope (Body Part Examined terms, :mod:`inference.scope`);
    ``None`` takes the FracAtlas regions for FracAtlas-style data (``dataset.csv`` with body
    region flags) and states no scope otherwise.
    """
    dataset = prepared.dataset
    val = prepared.parts[Split.VAL]
    labels = val.positive(dataset.positive_index)
    scores = split_scores(model, val, dataset.positive_index)
    calibration = fit_platt(labels, scores)
    probabilities = calibration.apply(scores)
    points = operating_points(labels, probabilities)
    size = model_input_size(model)
    prediction_shape = tuple(model.outputs[0].shape)
    output = OutputKind.SIGMOID if prediction_shape == (None, 1) else OutputKind.SOFTMAX
    localising = len(model.outputs) == 2
    card = ModelCard(
        name=name or model.name.replace("_", "-"),
        version=version,
        model_file="",
        sha256="0" * 64,
        input_size=size,
        input_channels=1,
        class_names=dataset.class_names,
        positive_class=dataset.class_names[dataset.positive_index],
        output=output,
        preprocessing=Preprocessing(size=size, crop=crop),
        gradcam_layer=GRADCAM_LAYER,
        calibration=calibration,
        operating_points=points,
        training_data=describe(dataset, prepared.splits)
        | {"skipped_pictures": sum(p.skipped for p in prepared.problems)}
        | (training or {}),
        metrics={
            "validation": {
                "n_images": int(labels.size),
                "n_positive": int(labels.sum()),
                "auroc": auroc(labels, scores),
                "operating_points": {n.value: asdict(p) for n, p in points.items()},
            }
        },
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        framework=framework_versions(),
        localisation_layer=LOCALISATION_LAYER if localising else None,
        body_parts=default_scope(prepared) if body_parts is None else body_parts,
    )
    return write_package(out, model, card)


def add_card_metrics(package_dir: Path, key: str, metrics: dict[str, Any]) -> None:
    """Add a metrics section (e.g. the test split's results) to a written card.

    The checksum covers the model file only, so the card may be updated after evaluation.
    """
    path = package_dir / "model.json"
    data = json.loads(path.read_text())
    data.setdefault("metrics", {})[key] = metrics
    path.write_text(json.dumps(data, indent=2) + "\n")

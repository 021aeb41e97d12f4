"""The bundled model package loads, validates and predicts through the service's path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from config.settings import BUNDLED_MODEL_DIR
from inference.model_package import OperatingPointName, file_sha256, load_package
from inference.picture import read_picture
from inference.predictor import Predictor
from inference.preprocess import prepare

BUNDLED = BUNDLED_MODEL_DIR


def test_bundled_package_is_valid_and_small() -> None:
    package = load_package(BUNDLED)
    card = package.card
    assert (BUNDLED / card.model_file).stat().st_size < 50 * 1024 * 1024
    assert file_sha256(BUNDLED / card.model_file) == card.sha256
    assert card.input_size == 320
    assert card.preprocessing.crop
    assert card.positive_class == "Fractured"
    high_sens = card.operating_point(OperatingPointName.HIGH_SENSITIVITY)
    high_spec = card.operating_point(OperatingPointName.HIGH_SPECIFICITY)
    assert high_sens.sensitivity >= 0.9
    assert high_spec.specificity >= 0.9
    assert high_sens.threshold < high_spec.threshold
    assert (BUNDLED / "evaluation" / "metrics.json").is_file()
    # It points at fractures (a localisation output) and states what it covers.
    assert card.localisation_layer is not None
    assert {"HAND", "HIP", "SHOULDER", "LEG"} <= set(card.body_parts)
    assert "CHEST" not in card.body_parts


def test_bundled_model_predicts_fracatlas_pictures(shared_dir: Path) -> None:
    package = load_package(BUNDLED)
    images = shared_dir / "data" / "fracatlas" / "images"
    pictures = [
        images / "Fractured" / "IMG0000019.jpg",
        images / "Non_fractured" / "IMG0000000.jpg",
    ]
    prepared = []
    for path in pictures:
        grey, _ = read_picture(path)
        prepared.append(prepare(grey, 320, crop=package.card.preprocessing.crop))
    results = Predictor(package).predict(prepared)
    for result, image in zip(results, prepared, strict=True):
        assert 0.0 < result.probability < 1.0
        positive = any(result.labels.values())
        assert bool(result.regions) == positive
        heat = result.heatmap_on_original()
        assert heat.shape == (image.transform.original_height, image.transform.original_width)
        assert np.all(np.isfinite(heat))

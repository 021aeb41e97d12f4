"""train -> package -> load -> predict, evaluate and export, through the CLI commands.

Trains a small model on a few dozen FracAtlas pictures at 64 px; seconds, not minutes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from inference.model_package import OperatingPointName, load_package
from inference.picture import read_picture
from inference.predictor import Predictor
from inference.preprocess import prepare
from tests.training.conftest import N_PER_CLASS
from training.fit import RunState


@pytest.fixture(scope="module")
def trained_run(
    atlas_copy: Path, cli: typer.Typer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            str(atlas_copy),
            "--out",
            str(out),
            "--image-size",
            "64",
            "--epochs",
            "3",
            "--time-budget-minutes",
            "0",
            "--batch-size",
            "8",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_train_writes_a_package_that_loads_and_predicts(
    trained_run: Path, atlas_copy: Path
) -> None:
    state = RunState.load(trained_run)
    assert state.epochs_done == 1
    assert state.stop_reason == "time budget spent"
    data = json.loads((trained_run / "data.json").read_text())
    assert {"file": "broken.jpg", "problem": data["problems"][0]["problem"], "skipped": True} in (
        data["problems"]
    )
    package = load_package(trained_run / "package")
    card = package.card
    assert card.input_size == 64
    assert card.positive_class == "Fractured"
    assert card.training_data["seed"] == 3
    assert card.metrics["test"]["n_images"] > 0
    grey, _ = read_picture(next((atlas_copy / "images" / "Fractured").glob("*.jpg")))
    prepared = prepare(grey, 64, crop=card.preprocessing.crop)
    [result] = Predictor(package).predict([prepared])
    assert 0.0 <= result.probability <= 1.0
    assert result.heatmap_on_original().shape == grey.shape
    split = json.loads((trained_run / "package" / "evaluation" / "split.json").read_text())
    assert set(split) == {"train", "val", "test"}
    assert not set(split["test"]) & set(split["train"])


@pytest.mark.slow
def test_operating_points_hold_on_the_validation_split(trained_run: Path) -> None:
    card = load_package(trained_run / "package").card
    validation = card.metrics["validation"]["operating_points"]
    sens = card.operating_points[OperatingPointName.HIGH_SENSITIVITY]
    spec = card.operating_points[OperatingPointName.HIGH_SPECIFICITY]
    assert sens.sensitivity >= 0.9
    assert spec.specificity >= 0.9
    assert validation["high_sensitivity"]["sensitivity"] == sens.sensitivity


@pytest.mark.slow
def test_rerunning_train_resumes_without_training_again(
    trained_run: Path, atlas_copy: Path, cli: typer.Typer
) -> None:
    before = (trained_run / "best.keras").stat().st_mtime_ns
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            str(atlas_copy),
            "--out",
            str(trained_run),
            "--image-size",
            "64",
            "--epochs",
            "3",
            "--time-budget-minutes",
            "0",
            "--seed",
            "3",
            "--no-export",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "already finished" in result.output or "time budget" in result.output
    assert (trained_run / "best.keras").stat().st_mtime_ns == before


@pytest.mark.slow
def test_evaluate_writes_metrics_and_predictions(
    trained_run: Path, atlas_copy: Path, cli: typer.Typer, tmp_path: Path
) -> None:
    out = tmp_path / "evaluation"
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(trained_run / "package"),
            "--data",
            str(atlas_copy),
            "--out",
            str(out),
            "--split",
            "all",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("auroc", "auroc_ci", "kappa", "n_images", "operating_points", "body_parts"):
        assert key in metrics
    assert metrics["n_images"] == 2 * N_PER_CLASS
    assert metrics["skipped"] == ["broken.jpg"]
    for point in ("high_sensitivity", "high_specificity"):
        assert {"sensitivity", "specificity", "confusion_matrix"} <= set(
            metrics["operating_points"][point]
        )
    assert "localisation" in metrics
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * N_PER_CLASS
    assert {"file", "label", "probability"} <= set(rows[0])
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    for name in ("roc.png", "calibration.png", "report.md", "confusion_high_sensitivity.png"):
        assert (out / name).is_file()


@pytest.mark.slow
def test_export_writes_an_equivalent_package(
    trained_run: Path, atlas_copy: Path, cli: typer.Typer, tmp_path: Path
) -> None:
    out = tmp_path / "exported"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "--model",
            str(trained_run),
            "--data",
            str(atlas_copy),
            "--out",
            str(out),
            "--seed",
            "3",
            "--cache-dir",
            str(trained_run.parent / "cache"),
            "--version",
            "2.0.0",
        ],
    )
    assert result.exit_code == 0, result.output
    exported = load_package(out).card
    original = load_package(trained_run / "package").card
    assert exported.version == "2.0.0"
    assert exported.calibration == original.calibration
    assert exported.operating_points == original.operating_points
    np.testing.assert_array_equal(exported.class_names, original.class_names)


@pytest.mark.slow
def test_three_class_data_trains_a_softmax_package(tmp_path: Path, cli: typer.Typer) -> None:
    rng = np.random.default_rng(0)
    for index, name in enumerate(("Fractured", "Normal", "Hardware")):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(12):
            image = (rng.random((48, 40)) * 80 + 60 * index).astype(np.uint8)
            assert cv2.imwrite(str(folder / f"{name}{i}.png"), image)
    out = tmp_path / "runs" / "three"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--no-augment",
        ],
    )
    assert result.exit_code == 0, result.output
    card = load_package(out / "package").card
    assert card.output.value == "softmax"
    assert card.class_names == ("Fractured", "Hardware", "Normal")
    assert card.positive_class == "Fractured"
    metrics = json.loads((out / "package" / "evaluation" / "metrics.json").read_text())
    assert metrics["n_positive"] == 2

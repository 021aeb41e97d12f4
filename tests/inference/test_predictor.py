"""Predictor: scores, calibration, operating points and Grad-CAM from one pass."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from inference.gradcam import gradcam_maps, resize_map
from inference.model_package import OperatingPointName, load_package
from inference.predictor import Predictor, StudyPrediction, map_heatmap_to_original
from inference.preprocess import PreparedImage, prepare
from tests.training.packages import make_package, tiny_model


def _images(n: int, size: int = 32) -> list[PreparedImage]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        grey = rng.random((50 + 7 * i, 90 - 5 * i)).astype(np.float32)
        grey[10:30, 20:40] = 1.0
        out.append(prepare(grey, size, crop=False))
    return out


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("package")
    make_package(folder)
    return folder


def test_predictions_have_scores_probabilities_labels_and_maps(package_dir: Path) -> None:
    package = load_package(package_dir)
    predictor = Predictor(package)
    images = _images(5)
    results = predictor.predict(images, batch_size=2)
    expected = package.model.predict(np.stack([im.tensor for im in images]), verbose=0)[:, 0]
    assert len(results) == 5
    for result, score, image in zip(results, expected, images, strict=True):
        assert result.score == pytest.approx(float(score), abs=1e-5)
        assert result.probability == pytest.approx(
            float(package.card.calibration.apply([result.score])[0])
        )
        for name, point in package.card.operating_points.items():
            assert result.labels[name] == (result.probability >= point.threshold)
        assert result.heatmap.shape == (32, 32)
        assert result.heatmap.dtype == np.float32
        assert result.heatmap.min() >= 0.0
        assert result.heatmap.max() <= 1.0
        original = result.heatmap_on_original()
        t = image.transform
        assert original.shape == (t.original_height, t.original_width)
        np.testing.assert_allclose(original, np.clip(t.map_to_original(result.heatmap), 0, 1))
        x, y = result.peak_on_original()
        assert 0 <= x <= t.original_width
        assert 0 <= y <= t.original_height


def test_map_comes_from_the_same_pass_as_the_score(package_dir: Path) -> None:
    """An independent Grad-CAM on the probability gives the same normalised map.

    For a sigmoid output the gradient of the probability is the logit's times ``p(1 - p)``,
    a per-image constant that the normalisation removes.
    """
    package = load_package(package_dir)
    images = _images(3)
    results = Predictor(package).predict(images)
    model = package.model
    grad_model = keras.Model(
        model.inputs, [model.get_layer(package.card.gradcam_layer).output, model.output]
    )

    @tf.function
    def keras_io_style(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            features, probabilities = grad_model(x, training=False)
            target = probabilities[:, 0]
        return features, probabilities, tape.gradient(target, features)

    features, probabilities, gradients = keras_io_style(
        tf.constant(np.stack([im.tensor for im in images]))
    )
    independent = gradcam_maps(features.numpy(), gradients.numpy())
    for result, cam, p in zip(results, independent, probabilities.numpy()[:, 0], strict=True):
        assert result.score == pytest.approx(float(p), abs=1e-6)
        np.testing.assert_allclose(result.heatmap, resize_map(cam, 32), atol=1e-4)


def test_shared_model_is_not_changed(package_dir: Path) -> None:
    package = load_package(package_dir)
    before = [w.copy() for w in package.model.get_weights()]
    activation = package.model.layers[-1].activation
    x = np.stack([im.tensor for im in _images(2)])
    expected = package.model.predict(x, verbose=0)
    Predictor(package).predict(_images(2))
    assert package.model.layers[-1].activation is activation
    for old, new in zip(before, package.model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_allclose(package.model.predict(x, verbose=0), expected, atol=1e-6)


def test_zero_gradients_give_zero_maps_not_nan(tmp_path: Path) -> None:
    model = tiny_model()
    output = model.layers[-1]
    output.set_weights([np.zeros_like(w) for w in output.get_weights()])
    make_package(tmp_path, model=model)
    results = Predictor(load_package(tmp_path)).predict(_images(2))
    for result in results:
        assert result.score == pytest.approx(0.5)
        assert np.all(result.heatmap == 0.0)
        assert np.all(np.isfinite(result.heatmap_on_original()))


def test_softmax_model_reports_the_positive_class(tmp_path: Path) -> None:
    classes = ("Normal", "Fractured", "Hardware")
    card = make_package(tmp_path, class_names=classes)
    package = load_package(tmp_path)
    images = _images(3)
    expected = package.model.predict(np.stack([im.tensor for im in images]), verbose=0)
    results = Predictor(package).predict(images)
    assert card.positive_index == 1
    for result, row in zip(results, expected, strict=True):
        assert result.score == pytest.approx(float(row[1]), abs=1e-5)
        assert result.heatmap.shape == (32, 32)


def test_study_probability_is_the_maximum_over_eligible_images(package_dir: Path) -> None:
    predictor = Predictor(load_package(package_dir))
    images = _images(3)
    per_image = predictor.predict(images)
    study = predictor.predict_study(images)
    assert study.probability == max(p.probability for p in per_image)
    eligible = [True, False, True]
    partial = StudyPrediction.from_images(per_image, predictor.card, eligible)
    assert partial.probability == max(per_image[0].probability, per_image[2].probability)
    assert len(partial.images) == 3
    threshold = predictor.card.operating_point(OperatingPointName.HIGH_SPECIFICITY).threshold
    assert partial.labels[OperatingPointName.HIGH_SPECIFICITY] == (partial.probability >= threshold)
    with pytest.raises(ValueError, match="eligible"):
        StudyPrediction.from_images(per_image, predictor.card, [False] * 3)


def test_wrong_input_shape_is_refused(package_dir: Path) -> None:
    predictor = Predictor(load_package(package_dir))
    with pytest.raises(ValueError, match="32 x 32 x 1"):
        predictor.predict(_images(1, size=48))


def test_mapping_function_matches_the_method(package_dir: Path) -> None:
    result = Predictor(load_package(package_dir)).predict(_images(1))[0]
    np.testing.assert_array_equal(
        map_heatmap_to_original(result.heatmap, result.transform), result.heatmap_on_original()
    )

"""EfficientNet-Lite: the offline ImageNet port, and a localising model trained end to end."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import keras
import numpy as np
import pytest
from skimage import data as skdata
from skimage import transform as sktransform

from inference.model_package import OperatingPointName, load_package
from inference.picture import read_picture
from inference.predictor import Predictor
from inference.preprocess import prepare
from training import efficientnet_lite as lite
from training.architectures import LOCALISATION_LAYER, build_model
from training.fit import RunState, freeze_leading_blocks
from training.names import Architecture
from training.torch_legacy import LEGACY_MAGIC, LEGACY_PROTOCOL, TorchFileError, read_state_dict

# ImageNet top-1 of the published EfficientNet-Lite0 on scikit-image's pictures, resized to
# 224 x 224 with anti-aliasing (the figures the port must reproduce within 0.02).
EXPECTED_TOP1 = {"chelsea": (285, 0.661), "coffee": (967, 0.892)}


def _imagenet_input(picture: np.ndarray, size: int) -> np.ndarray:
    resized = sktransform.resize(picture, (size, size), anti_aliasing=True) * 255
    return resized[np.newaxis].astype(np.float32)


def test_lite0_port_classifies_imagenet_pictures_like_the_original() -> None:
    variant = lite.VARIANTS["lite0"]
    model = lite.imagenet_classifier(variant, 224)
    copied = lite.load_imagenet_weights(model, variant, classifier=True)
    assert copied == 247  # every backbone tensor and the classifier, nothing left random
    for name, (klass, probability) in EXPECTED_TOP1.items():
        picture = getattr(skdata, name)()
        scores = model.predict(_imagenet_input(picture, 224), verbose=0)[0]
        assert int(np.argmax(scores)) == klass
        assert float(scores.max()) == pytest.approx(probability, abs=0.02)


@pytest.mark.parametrize("name", ["lite1", "lite2"])
def test_lite1_and_lite2_weights_fit_the_graph_and_know_a_cat(name: str) -> None:
    variant = lite.VARIANTS[name]
    model = lite.imagenet_classifier(variant)
    lite.load_imagenet_weights(model, variant, classifier=True)
    scores = model.predict(_imagenet_input(skdata.chelsea(), variant.resolution), verbose=0)[0]
    assert int(np.argmax(scores)) == EXPECTED_TOP1["chelsea"][0]


def test_stride_two_convolutions_pad_symmetrically() -> None:
    """Keras 'same' pads stride-2 convolutions on one side; the weights expect both sides."""
    model = build_model(Architecture.EFFICIENTNET_LITE0, 64, 2, weights=None)
    stem_pad = model.get_layer("stem_conv_pad")
    assert stem_pad.padding == ((1, 1), (1, 1))
    assert model.get_layer("stem_conv").padding == "valid"


def test_a_mismatched_weights_file_is_refused_naming_the_layer() -> None:
    model = lite.imagenet_classifier(lite.VARIANTS["lite0"], 224)
    with pytest.raises(ValueError, match="do not fit"):
        lite.load_imagenet_weights(
            model, lite.VARIANTS["lite0"], path=lite.weights_file(lite.VARIANTS["lite2"])
        )


def test_the_reader_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    pickle.dump({"x": print}, buffer, protocol=2)  # a global other than tensors
    path = tmp_path / "hostile.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(TorchFileError, match="refusing to load"):
        read_state_dict(path)


def test_the_reader_refuses_a_file_of_another_format(tmp_path: Path) -> None:
    path = tmp_path / "zip.pth"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(TorchFileError):
        read_state_dict(path)


def test_freezing_keeps_the_stem_and_first_blocks_out_of_training() -> None:
    model = build_model(Architecture.EFFICIENTNET_LITE0, 64, 2, weights=None)
    before = len(model.trainable_weights)
    assert freeze_leading_blocks(model, 5) > 0
    assert not model.get_layer("stem_conv").trainable
    assert not model.get_layer("block4_dw_conv").trainable
    assert model.get_layer("block5_dw_conv").trainable
    assert len(model.trainable_weights) < before


@pytest.mark.slow
def test_lite_training_writes_a_localising_package_that_loads_without_custom_code(
    lite_run: Path,
    atlas_copy: Path,
) -> None:
    assert RunState.load(lite_run).epochs_done == 1
    # Plain Keras, no registered objects: the service's loader (safe mode) takes it.
    model = keras.models.load_model(lite_run / "best.keras", compile=False, safe_mode=True)
    # Stage 1 gives the 1/8 map already; stage 2 refined it with the classifier frozen.
    assert [tuple(o.shape) for o in model.outputs] == [(None, 1), (None, 8, 8, 1)]
    package = load_package(lite_run / "package")
    card = package.card
    assert card.localisation_layer == LOCALISATION_LAYER
    assert card.training_data["weights"] == "imagenet"
    grey, _ = read_picture(next((atlas_copy / "images" / "Fractured").glob("*.jpg")))
    prepared = prepare(grey, 64, crop=card.preprocessing.crop)
    predictor = Predictor(package)
    assert predictor.localising
    [result] = predictor.predict([prepared])
    assert result.heatmap.shape == (64, 64)
    assert result.heatmap_on_original().shape == grey.shape
    positive_at = [p for p in OperatingPointName if result.labels[p]]
    assert bool(result.regions) == bool(positive_at)
    for region in result.regions:
        assert 0 <= region.x0 < region.x1 <= grey.shape[1]
        assert 0 <= region.y0 < region.y1 <= grey.shape[0]
        assert region.probability <= result.probability + 1e-9


@pytest.mark.slow
def test_lite_evaluation_reports_box_recall_at_both_operating_points(lite_run: Path) -> None:
    metrics = json.loads((lite_run / "package" / "evaluation" / "metrics.json").read_text())
    localisation = metrics["localisation"]
    assert set(localisation) >= {"share", "chance_share", "top_region_share", "boxes"}
    assert set(localisation["boxes"]) == {p.value for p in OperatingPointName}
    for figures in localisation["boxes"].values():
        assert figures["boxes_all"] > 0  # every fractured test picture's boxes are counted
    assert 0.0 <= metrics["calibration"]["ece"] <= 1.0
    assert 0.0 <= metrics["calibration"]["brier"] <= 1.0
    for point in metrics["operating_points"].values():
        low, high = point["sensitivity_ci"]
        assert low <= point["sensitivity"] <= high
        low, high = point["specificity_ci"]
        assert low <= point["specificity"] <= high

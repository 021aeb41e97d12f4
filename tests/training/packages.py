"""Small, untrained model packages for tests (built in seconds, no training)."""

from __future__ import annotations

from pathlib import Path

import keras

from inference.model_package import (
    ModelCard,
    OperatingPoint,
    OperatingPointName,
    OutputKind,
    PlattCalibration,
    Preprocessing,
    write_package,
)
from training.architectures import GRADCAM_LAYER, build_small

TINY_WIDTHS = (8, 8, 16, 16)


def tiny_model(size: int = 32, n_outputs: int = 1, seed: int = 0) -> keras.Model:
    """A small residual CNN with random weights."""
    keras.utils.set_random_seed(seed)
    return build_small(size, n_outputs, widths=TINY_WIDTHS)


def tiny_card(
    size: int = 32,
    class_names: tuple[str, ...] = ("Fractured", "Non_fractured"),
    output: OutputKind = OutputKind.SIGMOID,
) -> ModelCard:
    """A card for :func:`tiny_model` (model file and checksum are filled in by writing)."""
    return ModelCard(
        name="tiny",
        version="0.0.1",
        model_file="",
        sha256="0" * 64,
        input_size=size,
        input_channels=1,
        class_names=class_names,
        positive_class="Fractured",
        output=output,
        preprocessing=Preprocessing(size=size, crop=False),
        gradcam_layer=GRADCAM_LAYER,
        calibration=PlattCalibration(slope=1.0, intercept=0.0),
        operating_points={
            OperatingPointName.HIGH_SENSITIVITY: OperatingPoint(0.3, 0.95, 0.4, 0.9),
            OperatingPointName.HIGH_SPECIFICITY: OperatingPoint(0.7, 0.5, 0.92, 0.9),
        },
    )


def make_package(
    folder: Path,
    size: int = 32,
    class_names: tuple[str, ...] = ("Fractured", "Non_fractured"),
    model: keras.Model | None = None,
) -> ModelCard:
    """Write a tiny package into ``folder``; a sigmoid model for two classes, else softmax."""
    output = OutputKind.SIGMOID if len(class_names) == 2 else OutputKind.SOFTMAX
    n_outputs = 1 if output is OutputKind.SIGMOID else len(class_names)
    chosen = model if model is not None else tiny_model(size, n_outputs)
    return write_package(folder, chosen, tiny_card(size, class_names, output))


def localising_package(folder: Path, size: int = 64) -> ModelCard:
    """A package of an untrained EfficientNet-Lite0 with its localisation output and a scope."""
    from dataclasses import replace

    from inference.scope import FRACATLAS_BODY_PARTS
    from training.architectures import LOCALISATION_LAYER, build_model
    from training.names import Architecture

    keras.utils.set_random_seed(0)
    model = build_model(Architecture.EFFICIENTNET_LITE0, size, 2, weights=None)
    card = replace(
        tiny_card(size),
        localisation_layer=LOCALISATION_LAYER,
        body_parts=FRACATLAS_BODY_PARTS,
    )
    return write_package(folder, model, card)

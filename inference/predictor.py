"""Predictions with a fracture map from one forward pass, per image and per study.

A :class:`Predictor` is built once from a :class:`~inference.model_package.ModelPackage`. A
model with a localisation output (trained on fracture boxes) gives its map in the same forward
pass, and the suspected fracture regions are read from it (:mod:`inference.regions`). A model
without one gets Grad-CAM: the gradient model (features + class score) is built at that moment,
and every batch runs one ``tf.GradientTape`` pass that yields both the score and the map. The
package's model is never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from inference.gradcam import gradcam_maps, gradcam_model, map_focus, resize_map
from inference.model_package import ModelCard, ModelPackage, OperatingPointName, OutputKind
from inference.preprocess import GeometryTransform, PreparedImage
from inference.regions import Region, find_regions

FloatImage = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ImagePrediction:
    """One image's result.

    ``heatmap`` is the fracture map on the model-input grid (``size x size``, ``[0, 1]``): the
    localisation output where the model has one (not rescaled: a quiet map stays quiet), else
    the Grad-CAM map for the positive class (scaled to its peak);
    :meth:`heatmap_on_original` maps it onto the original image. ``regions`` are the suspected
    fractures (boxes in original pixels), empty for a negative image or a Grad-CAM model.
    """

    score: float
    probability: float
    labels: dict[OperatingPointName, bool]
    heatmap: FloatImage
    transform: GeometryTransform
    regions: tuple[Region, ...] = ()

    def heatmap_on_original(self) -> FloatImage:
        """The heat map resampled onto the original pixel grid (0 outside the crop)."""
        return map_heatmap_to_original(self.heatmap, self.transform)

    def peak_on_original(self) -> tuple[float, float]:
        """``(x, y)`` of the heat map's peak over the image content, in original pixels.

        The peak is the map's focus (:func:`inference.gradcam.map_focus`): the centre of the
        area around its maximum, which follows the map between the coarse map's cells. The
        letterbox padding holds no image, so it is searched inside the content box.
        """
        t = self.transform
        box = t.content_box()
        content = self.heatmap[box.y0 : box.y1, box.x0 : box.x1]
        x, y = map_focus(content if content.size else self.heatmap)
        if content.size:
            x, y = x + box.x0, y + box.y0
        ox, oy = t.to_original(x, y)
        return (
            float(np.clip(ox, 0.0, t.original_width)),
            float(np.clip(oy, 0.0, t.original_height)),
        )


@dataclass(frozen=True, slots=True)
class StudyPrediction:
    """Per-image results and the study's result: the maximum over the eligible images."""

    images: tuple[ImagePrediction, ...]
    probability: float
    labels: dict[OperatingPointName, bool]
    model_name: str
    model_version: str

    @classmethod
    def from_images(
        cls,
        images: Sequence[ImagePrediction],
        card: ModelCard,
        eligible: Sequence[bool] | None = None,
    ) -> StudyPrediction:
        """Aggregate image results; ``eligible`` (default: all) selects the images that count."""
        chosen = (
            list(images)
            if eligible is None
            else [p for p, ok in zip(images, eligible, strict=True) if ok]
        )
        if not chosen:
            raise ValueError("a study prediction needs at least one eligible image")
        probability = max(p.probability for p in chosen)
        return cls(
            images=tuple(images),
            probability=probability,
            labels=_labels(probability, card),
            model_name=card.name,
            model_version=card.version,
        )


def map_heatmap_to_original(heatmap: FloatImage, transform: GeometryTransform) -> FloatImage:
    """Resample a model-grid heat map onto the original image, clipped to ``[0, 1]``."""
    return np.clip(transform.map_to_original(heatmap), 0.0, 1.0).astype(np.float32)


def _labels(probability: float, card: ModelCard) -> dict[OperatingPointName, bool]:
    return {
        name: bool(probability >= point.threshold) for name, point in card.operating_points.items()
    }


class Predictor:
    """Scores, calibrated probabilities, operating-point labels and Grad-CAM maps for a package."""

    def __init__(self, package: ModelPackage, *, output_layer: str | None = None) -> None:
        self.card = package.card
        model = package.model
        self._class_index = (
            0 if self.card.output is OutputKind.SIGMOID else self.card.positive_index
        )
        size = self.card.input_size
        signature = [tf.TensorSpec((None, size, size, 1), tf.float32)]
        self._localising = self.card.localisation_layer is not None
        if self._localising:
            self._model = model
            self._localise = tf.function(
                self._forward_localisation, input_signature=signature, reduce_retracing=True
            )
            return
        output_name = output_layer or model.layers[-1].name
        outputs = gradcam_model(model, self.card.gradcam_layer, output_name)
        self._grad_model = outputs.model
        self._output_layer = model.get_layer(output_name)
        self._activation = (
            None
            if outputs.output_activation is None
            else keras.activations.get(outputs.output_activation)
        )
        self._step = tf.function(self._forward, input_signature=signature, reduce_retracing=True)

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def localising(self) -> bool:
        """Whether the map comes from the model's localisation output (else Grad-CAM)."""
        return self._localising

    def _forward_localisation(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One pass: positive-class probability and the localisation map (N x h x w)."""
        probabilities, maps = self._model(images, training=False)
        return probabilities[:, self._class_index], maps[..., 0]

    def scores_and_maps(
        self, x: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Raw scores and coarse maps (``N x h x w`` in ``[0, 1]``) of a batch."""
        if self._localising:
            scores, maps = self._localise(tf.constant(x))
            return scores.numpy(), np.clip(maps.numpy(), 0.0, 1.0).astype(np.float32)
        scores, features, gradients = self._step(tf.constant(x))
        return scores.numpy(), gradcam_maps(features.numpy(), gradients.numpy())

    def _forward(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One pass: positive-class probability, feature activations and their gradients."""
        with tf.GradientTape() as tape:
            features, head_input = self._grad_model(images, training=False)
            tape.watch(features)
            if self._activation is None:
                probabilities = head_input
                target = head_input[:, self._class_index]
            else:
                layer = self._output_layer
                logits = tf.matmul(head_input, layer.kernel)
                if layer.bias is not None:
                    logits = logits + layer.bias
                probabilities = self._activation(logits)
                target = logits[:, self._class_index]
        gradients = tape.gradient(target, features)
        if gradients is None:
            gradients = tf.zeros_like(features)
        return probabilities[:, self._class_index], features, gradients

    def predict(
        self, images: Sequence[PreparedImage], *, batch_size: int = 16
    ) -> list[ImagePrediction]:
        """Predict every image, ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        size = self.card.input_size
        for image in images:
            if image.tensor.shape != (size, size, 1):
                raise ValueError(
                    f"model input must be {size} x {size} x 1, got {image.tensor.shape}"
                )
        results: list[ImagePrediction] = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            x = np.stack([np.clip(im.tensor, 0.0, 1.0) for im in batch]).astype(np.float32)
            scores, maps = self.scores_and_maps(x)
            calibrated = self.card.calibration.apply(scores)
            for image, score, probability, cam in zip(batch, scores, calibrated, maps, strict=True):
                labels = _labels(float(probability), self.card)
                heatmap = resize_map(cam, size)
                regions: tuple[Region, ...] = ()
                if self._localising:
                    positive_at = [name.value for name in OperatingPointName if labels[name]]
                    regions = find_regions(
                        heatmap, image.transform, float(probability), positive_at
                    )
                results.append(
                    ImagePrediction(
                        score=float(score),
                        probability=float(probability),
                        labels=labels,
                        heatmap=heatmap,
                        transform=image.transform,
                        regions=regions,
                    )
                )
        return results

    def predict_study(
        self,
        images: Sequence[PreparedImage],
        *,
        eligible: Sequence[bool] | None = None,
        batch_size: int = 16,
    ) -> StudyPrediction:
        """Predict a study's images and aggregate them (maximum over eligible images)."""
        return StudyPrediction.from_images(
            self.predict(images, batch_size=batch_size), self.card, eligible
        )

"""Grad-CAM maths: class activation maps from a layer's activations and their gradients.

Arrays in, arrays out (Selvaraju et al., Grad-CAM, 2017): channel weights are the spatially
averaged gradients of the class score; the map is the ReLU of the weighted sum of activations,
scaled to ``[0, 1]`` per image. Drawing belongs to ``reporting``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import keras
import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]

#: A map whose maximum is below this is treated as empty (all zero), never divided by.
EMPTY_MAP_MAX = 1e-12


@dataclass(frozen=True, slots=True)
class GradcamOutputs:
    """The layers a Grad-CAM pass needs: the feature layer and the output layer's input."""

    model: keras.Model
    #: Activation of the output layer (applied to its pre-activation inside the tape), or None
    #: when the output layer is not a Dense layer and the model's output is used as it is.
    output_activation: str | None


def gradcam_model(model: keras.Model, layer_name: str, output_layer_name: str) -> GradcamOutputs:
    """A model sharing ``model``'s weights that returns (features, pre-activation input).

    Gradients of a saturated sigmoid vanish; taking the class score before the output
    activation (the logit, as keras-io's example does by removing the last activation) avoids
    that without changing the shared model. For a Dense output layer the returned model yields
    the Dense layer's *input*; the caller applies the layer's kernel, bias and activation.
    """
    features = model.get_layer(layer_name).output
    output_layer = model.get_layer(output_layer_name)
    if isinstance(output_layer, keras.layers.Dense):
        name = str(getattr(output_layer.activation, "__name__", "linear"))
        return GradcamOutputs(keras.Model(model.inputs, [features, output_layer.input]), name)
    return GradcamOutputs(keras.Model(model.inputs, [features, model.output]), None)


def gradcam_maps(activations: FloatArray, gradients: FloatArray) -> FloatArray:
    """Grad-CAM maps ``N x h x w`` in ``[0, 1]`` from ``N x h x w x c`` activations and gradients.

    An image whose map is all zero (no positive evidence, or zero gradients) gets an all-zero
    map, never NaN.
    """
    if activations.shape != gradients.shape or activations.ndim != 4:
        raise ValueError(
            f"activations {activations.shape} and gradients {gradients.shape} "
            "must be equal N x h x w x c arrays"
        )
    weights = gradients.astype(np.float64).mean(axis=(1, 2))  # N x c
    cams = np.einsum("nhwc,nc->nhw", activations.astype(np.float64), weights)
    cams = np.maximum(cams, 0.0)
    cams[~np.isfinite(cams)] = 0.0
    peaks = cams.max(axis=(1, 2), keepdims=True)
    safe = np.where(peaks > EMPTY_MAP_MAX, peaks, 1.0)
    normalised = np.where(peaks > EMPTY_MAP_MAX, cams / safe, 0.0)
    return normalised.astype(np.float32)


def resize_map(cam: FloatArray, size: int) -> FloatArray:
    """A coarse ``h x w`` map resized (bilinear) to ``size x size``, clipped to ``[0, 1]``."""
    if cam.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {cam.shape}")
    resized = cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


#: The map's focus is the centre of mass of the area at or above this share of its maximum,
#: around the maximum (chosen on the validation split: docs/MODEL.md, "Where the map points").
FOCUS_LEVEL = 0.75


def map_focus(heat: FloatArray, level: float = FOCUS_LEVEL) -> tuple[float, float]:
    """``(x, y)`` of the map's focus, in pixel units (pixel ``i`` spans ``[i, i + 1)``).

    The focus is the map-weighted centre of mass of the connected area (8-connected) at or
    above ``level`` times the maximum that holds the (first) maximum. A coarse map resized
    bilinearly peaks exactly on one of its cell centres, so the plain maximum can only land on
    that grid (8 px apart at 320 px for a 40 x 40 map, more than a small fracture box); the
    centre of the peak's area follows the map's shape between cells. A map without a positive
    value has the centre of its first maximum's pixel as its focus.
    """
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"expected a non-empty 2-D map, got shape {heat.shape}")
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must lie in (0, 1], got {level!r}")
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    peak = float(heat[y, x])
    if not np.isfinite(peak) or peak <= 0.0:
        return float(x) + 0.5, float(y) + 0.5
    mask = (heat >= level * peak).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    weights = np.where(labels == labels[y, x], heat, 0.0).astype(np.float64)
    rows, columns = np.indices(heat.shape)
    total = weights.sum()
    return (
        float((columns * weights).sum() / total) + 0.5,
        float((rows * weights).sum() / total) + 0.5,
    )

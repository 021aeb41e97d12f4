"""Platt scaling (scikit-learn logistic regression) and operating points, from validation data."""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from inference.model_package import OperatingPoint, OperatingPointName, PlattCalibration
from training.metrics import confusion_at

#: Default targets: sensitivity for the high-sensitivity point, specificity for the other.
DEFAULT_TARGETS = {
    OperatingPointName.HIGH_SENSITIVITY: 0.90,
    OperatingPointName.HIGH_SPECIFICITY: 0.90,
}


def fit_platt(
    labels: ArrayLike, scores: ArrayLike, *, eps: float = 1e-6, iterations: int = 100
) -> PlattCalibration:
    """Fit ``p = sigmoid(a * logit(s) + b)`` by maximum likelihood (Newton's method).

    Uses Platt's smoothed targets (``(n+ + 1) / (n+ + 2)`` and ``1 / (n- + 2)``), which keep
    the fit finite on separable data, and a negligible ridge (1e-6) on ``a`` so that constant
    scores still have a unique fit. ``iterations`` bounds the Newton steps.
    """
    truth = np.asarray(labels).astype(bool)
    s = np.clip(np.asarray(scores, dtype=np.float64), eps, 1.0 - eps)
    if truth.shape != s.shape or truth.ndim != 1:
        raise ValueError(f"labels {truth.shape} and scores {s.shape} must be equal 1-D arrays")
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"Platt scaling needs both classes, got {n_pos} positive, {n_neg} negative"
        )
    logit = np.log(s / (1.0 - s))[:, None]
    target = np.where(truth, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    # A soft target t is a positive copy of the example with weight t and a negative copy
    # with weight 1 - t: the same likelihood, in the form LogisticRegression accepts.
    model = LogisticRegression(C=1e6, solver="newton-cholesky", tol=1e-10, max_iter=iterations)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            model.fit(
                np.concatenate([logit, logit]),
                np.concatenate([np.ones(s.size), np.zeros(s.size)]),
                sample_weight=np.concatenate([target, 1.0 - target]),
            )
    except ConvergenceWarning as warning:
        raise ValueError(f"Platt scaling did not converge: {warning}") from None
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError(f"Platt scaling did not converge: slope {slope}, intercept {intercept}")
    return PlattCalibration(slope=slope, intercept=intercept, eps=eps)


def high_sensitivity_point(
    labels: ArrayLike, probabilities: ArrayLike, target: float
) -> OperatingPoint:
    """The highest threshold whose sensitivity on this data is at least ``target``."""
    truth = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    positives = np.sort(p[truth])[::-1]
    if positives.size == 0:
        raise ValueError("an operating point needs at least one positive example")
    needed = max(1, math.ceil(target * positives.size - 1e-9))
    threshold = float(positives[needed - 1])
    return _point(truth, p, threshold, target)


def high_specificity_point(
    labels: ArrayLike, probabilities: ArrayLike, target: float
) -> OperatingPoint:
    """The lowest threshold whose specificity on this data is at least ``target``."""
    truth = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    negatives = np.sort(p[~truth])
    if negatives.size == 0:
        raise ValueError("an operating point needs at least one negative example")
    needed = max(1, math.ceil(target * negatives.size - 1e-9))
    # Every negative up to the needed one must fall below the threshold.
    threshold = float(np.nextafter(negatives[needed - 1], np.inf))
    return _point(truth, p, min(threshold, 1.0), target)


def _point(
    truth: NDArray[np.bool_], p: NDArray[np.float64], threshold: float, target: float
) -> OperatingPoint:
    reached = confusion_at(truth, p, threshold)
    return OperatingPoint(
        threshold=threshold,
        sensitivity=_finite(reached.sensitivity),
        specificity=_finite(reached.specificity),
        target=target,
    )


def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def operating_points(
    labels: ArrayLike,
    probabilities: ArrayLike,
    targets: dict[OperatingPointName, float] | None = None,
) -> dict[OperatingPointName, OperatingPoint]:
    """Both operating points on calibrated probabilities."""
    chosen = DEFAULT_TARGETS | (targets or {})
    return {
        OperatingPointName.HIGH_SENSITIVITY: high_sensitivity_point(
            labels, probabilities, chosen[OperatingPointName.HIGH_SENSITIVITY]
        ),
        OperatingPointName.HIGH_SPECIFICITY: high_specificity_point(
            labels, probabilities, chosen[OperatingPointName.HIGH_SPECIFICITY]
        ),
    }

"""Metric functions on labels (0/1, 1 = positive) and scores, built on scikit-learn and scipy.

The functions add what the evaluation needs around the library calls: 1-D shape checks with
the shapes in the message, NaN where a metric is undefined (one class only, no data) instead
of a warning or an exception, and ROC and calibration arrays in a fixed layout for the plots.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import binomtest
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import brier_score_loss, cohen_kappa_score, roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

#: The cells of a binary confusion matrix as (truth, prediction) pairs, in ``Confusion`` order.
_CELL_TRUTH = np.array([1, 0, 0, 1])
_CELL_PREDICTION = np.array([1, 1, 0, 0])


@dataclass(frozen=True, slots=True)
class Confusion:
    """A binary confusion matrix (positive = fractured)."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def sensitivity(self) -> float:
        """Recall of the positive class; NaN without positives."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.n)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def kappa(self) -> float:
        """Cohen's kappa: agreement beyond chance between prediction and truth.

        NaN without data; 1.0 when truth and prediction agree on a single class, where the
        formula is 0 / 0.
        """
        if self.n == 0:
            return float("nan")
        if self.n in (self.tp, self.tn):
            return 1.0
        # The four cells, each weighted by its count, are the whole data set.
        return float(
            cohen_kappa_score(
                _CELL_TRUTH,
                _CELL_PREDICTION,
                sample_weight=[self.tp, self.fp, self.tn, self.fn],
            )
        )

    def as_matrix(self) -> list[list[int]]:
        """``[[tn, fp], [fn, tp]]``: rows truth (negative, positive), columns prediction."""
        return [[self.tn, self.fp], [self.fn, self.tp]]


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else float("nan")


def _as_binary(labels: ArrayLike) -> NDArray[np.bool_]:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    return arr.astype(bool)


def _scores_for(truth: NDArray[np.bool_], scores: ArrayLike) -> NDArray[np.float64]:
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != truth.shape:
        raise ValueError(f"labels {truth.shape} and scores {values.shape} differ in shape")
    return values


def _both_classes(truth: NDArray[np.bool_]) -> bool:
    return bool(truth.any() and not truth.all())


def confusion(labels: ArrayLike, predicted: ArrayLike) -> Confusion:
    """Confusion matrix of binary labels against binary predictions."""
    truth, pred = _as_binary(labels), _as_binary(predicted)
    if truth.shape != pred.shape:
        raise ValueError(f"labels {truth.shape} and predictions {pred.shape} differ in shape")
    return Confusion(
        tp=int(np.sum(truth & pred)),
        fp=int(np.sum(~truth & pred)),
        tn=int(np.sum(~truth & ~pred)),
        fn=int(np.sum(truth & ~pred)),
    )


def confusion_at(labels: ArrayLike, scores: ArrayLike, threshold: float) -> Confusion:
    """Confusion matrix when ``score >= threshold`` is called positive."""
    return confusion(labels, np.asarray(scores, dtype=np.float64) >= threshold)


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (ties count one half); NaN for one class only."""
    truth = _as_binary(labels)
    values = _scores_for(truth, scores)
    if not _both_classes(truth):
        return float("nan")
    return float(roc_auc_score(truth, values))


def bootstrap_auroc_ci(
    labels: ArrayLike, scores: ArrayLike, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUROC (resampling images)."""
    truth = _as_binary(labels)
    values = _scores_for(truth, scores)
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(n_boot):
        pick = rng.integers(0, truth.size, truth.size)
        value = auroc(truth[pick], values[pick])
        if not np.isnan(value):
            estimates.append(value)
    if not estimates:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(estimates, [tail, 100.0 - tail])
    return float(low), float(high)


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """False positive rates, true positive rates and thresholds, from ``(0, 0)`` to ``(1, 1)``.

    One point per distinct score (``score >= threshold`` is positive), after a first point at
    threshold ``inf``. A rate without any example of its class is 0 throughout.
    """
    truth = _as_binary(labels)
    values = _scores_for(truth, scores)
    if truth.size == 0:
        return np.zeros(1), np.zeros(1), np.full(1, np.inf)
    with warnings.catch_warnings():
        # One class only: the library warns and returns NaN for the other class's rate.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thresholds = sklearn_roc_curve(truth, values, drop_intermediate=False)
    return (
        np.nan_to_num(fpr, nan=0.0).astype(np.float64),
        np.nan_to_num(tpr, nan=0.0).astype(np.float64),
        thresholds.astype(np.float64),
    )


def calibration_bins(
    labels: ArrayLike, probabilities: ArrayLike, n_bins: int = 10
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Mean predicted probability, observed positive rate and count per equal-width bin.

    Bins are those of ``sklearn.calibration.calibration_curve``: ``[0, 1/n]``, then
    ``(k/n, (k+1)/n]``. All three arrays have ``n_bins`` entries; an empty bin has count 0 and
    NaN means. Probabilities outside ``[0, 1]`` are refused.
    """
    truth = _as_binary(labels)
    values = _scores_for(truth, probabilities)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    mean = np.full(n_bins, np.nan)
    observed = np.full(n_bins, np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # calibration_curve reports only the filled bins, without counts; same binning here.
    counts = np.bincount(np.searchsorted(edges[1:-1], values), minlength=n_bins)[:n_bins]
    if values.size:
        filled_observed, filled_mean = calibration_curve(
            truth, values, n_bins=n_bins, strategy="uniform"
        )
        mean[counts > 0] = filled_mean
        observed[counts > 0] = filled_observed
    return mean, observed, counts.astype(np.int64)


def expected_calibration_error(
    labels: ArrayLike, probabilities: ArrayLike, n_bins: int = 10
) -> float:
    """Mean |observed rate - mean probability| over equal-width bins, weighted by count.

    The bins are those of :func:`calibration_bins`; empty bins do not count. NaN without data.
    """
    mean, observed, counts = calibration_bins(labels, probabilities, n_bins)
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(observed[filled] - mean[filled])) / total)


def brier_score(labels: ArrayLike, probabilities: ArrayLike) -> float:
    """Mean squared difference between probability and outcome (lower is better); NaN if empty."""
    truth = _as_binary(labels)
    values = _scores_for(truth, probabilities)
    if truth.size == 0:
        return float("nan")
    return float(brier_score_loss(truth, values, pos_label=True))


def wilson_interval(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. a sensitivity); NaN, NaN for ``total == 0``."""
    if total < 0 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got {successes} of {total}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    if total == 0:
        return float("nan"), float("nan")
    interval = binomtest(successes, total).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)

"""Pure metric functions on labels (0/1, 1 = positive) and scores; numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


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
        """Cohen's kappa: agreement beyond chance between prediction and truth."""
        n = self.n
        if n == 0:
            return float("nan")
        observed = (self.tp + self.tn) / n
        expected = (
            (self.tp + self.fp) * (self.tp + self.fn) + (self.tn + self.fn) * (self.tn + self.fp)
        ) / (n * n)
        if expected >= 1.0:
            return 1.0 if observed >= 1.0 else 0.0
        return (observed - expected) / (1.0 - expected)

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
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN for one class only."""
    truth = _as_binary(labels)
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != truth.shape:
        raise ValueError(f"labels {truth.shape} and scores {values.shape} differ in shape")
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    # Average ranks of ties.
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    rank_sum = ranks[truth].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auroc_ci(
    labels: ArrayLike, scores: ArrayLike, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUROC (resampling images)."""
    truth = _as_binary(labels)
    values = np.asarray(scores, dtype=np.float64)
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
    """False positive rates, true positive rates and thresholds, from ``(0, 0)`` to ``(1, 1)``."""
    truth = _as_binary(labels)
    values = np.asarray(scores, dtype=np.float64)
    thresholds = np.unique(values)[::-1]
    n_pos, n_neg = max(int(truth.sum()), 1), max(int((~truth).sum()), 1)
    tpr = np.array([0.0] + [np.sum(truth & (values >= t)) / n_pos for t in thresholds])
    fpr = np.array([0.0] + [np.sum(~truth & (values >= t)) / n_neg for t in thresholds])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def calibration_bins(
    labels: ArrayLike, probabilities: ArrayLike, n_bins: int = 10
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Mean predicted probability, observed positive rate and count per equal-width bin."""
    truth = _as_binary(labels).astype(np.float64)
    values = np.asarray(probabilities, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(values, edges[1:-1]), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    sums = np.bincount(which, weights=values, minlength=n_bins)
    hits = np.bincount(which, weights=truth, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts, hits / counts, counts.astype(np.int64)

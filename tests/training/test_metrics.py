"""Metric functions against their definitions and against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from training.metrics import (
    auroc,
    bootstrap_auroc_ci,
    calibration_bins,
    confusion,
    confusion_at,
    roc_curve,
)

labelled_scores = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(
            st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]) | st.floats(0, 1),
            min_size=n,
            max_size=n,
        ),
    )
)


@given(labelled_scores)
def test_auroc_matches_sklearn(data: tuple[list[bool], list[float]]) -> None:
    labels, scores = data
    value = auroc(labels, scores)
    if all(labels) or not any(labels):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.filterwarnings("ignore::UserWarning")
@given(labelled_scores)
def test_confusion_metrics_match_definitions(data: tuple[list[bool], list[float]]) -> None:
    labels, scores = data
    predicted = [s >= 0.5 for s in scores]
    c = confusion(labels, predicted)
    assert c.n == len(labels)
    assert c.tp + c.fn == sum(labels)
    kappa = cohen_kappa_score(labels, predicted)
    if not math.isnan(kappa):
        assert c.kappa == pytest.approx(kappa, abs=1e-9)
    if c.tp + c.fn:
        assert c.sensitivity == c.tp / (c.tp + c.fn)
    else:
        assert math.isnan(c.sensitivity)


@given(labelled_scores)
def test_roc_curve_is_monotone_and_ends_at_corners(data: tuple[list[bool], list[float]]) -> None:
    labels, scores = data
    fpr, tpr, _ = roc_curve(labels, scores)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(tpr) >= 0)
    if any(labels) and not all(labels):
        assert (fpr[-1], tpr[-1]) == (1.0, 1.0)


@settings(max_examples=25)
@given(labelled_scores)
def test_bootstrap_interval_is_ordered(data: tuple[list[bool], list[float]]) -> None:
    labels, scores = data
    low, high = bootstrap_auroc_ci(labels, scores, n_boot=50, seed=1)
    if not math.isnan(low):
        assert 0.0 <= low <= high <= 1.0


def test_confusion_at_threshold_is_inclusive() -> None:
    c = confusion_at([1, 0, 1, 0], [0.5, 0.5, 0.2, 0.1], 0.5)
    assert c.as_matrix() == [[1, 1], [1, 1]]


def test_calibration_bins_count_every_value() -> None:
    probabilities = np.array([0.0, 0.05, 0.5, 0.99, 1.0])
    mean, observed, counts = calibration_bins([0, 0, 1, 1, 1], probabilities, n_bins=10)
    assert counts.sum() == 5
    assert counts[0] == 2
    assert counts[9] == 2
    assert observed[9] == 1.0
    assert mean[0] == pytest.approx(0.025)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        auroc([1, 0], [0.1])

"""Metric functions against their definitions and against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from training.metrics import (
    Confusion,
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


@given(labelled_scores)
def test_auroc_is_the_probability_a_positive_outscores_a_negative(
    data: tuple[list[bool], list[float]],
) -> None:
    labels, scores = data
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        return
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    assert auroc(labels, scores) == pytest.approx(wins / (len(positives) * len(negatives)))


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


def _kappa_by_definition(c: Confusion) -> float:
    observed = (c.tp + c.tn) / c.n
    expected = ((c.tp + c.fp) * (c.tp + c.fn) + (c.tn + c.fn) * (c.tn + c.fp)) / c.n**2
    return (observed - expected) / (1.0 - expected)


def test_kappa_of_a_hand_computed_matrix() -> None:
    # observed 8/11, expected (4 * 5 + 7 * 6) / 121 = 62/121: kappa (88 - 62) / (121 - 62)
    assert Confusion(tp=3, fp=1, tn=5, fn=2).kappa == pytest.approx(26 / 59)


@given(st.tuples(*[st.integers(0, 50)] * 4))
def test_kappa_follows_its_definition(cells: tuple[int, int, int, int]) -> None:
    c = Confusion(*cells)
    if c.n == 0:
        assert math.isnan(c.kappa)
    elif c.n in (c.tp, c.tn):
        assert c.kappa == 1.0
    else:
        assert c.kappa == pytest.approx(_kappa_by_definition(c), abs=1e-12)


@given(labelled_scores)
def test_roc_curve_has_one_point_per_distinct_score(data: tuple[list[bool], list[float]]) -> None:
    labels, scores = data
    fpr, tpr, thresholds = roc_curve(labels, scores)
    truth, values = np.array(labels), np.array(scores)
    assert thresholds[0] == np.inf
    assert list(thresholds[1:]) == sorted(set(scores), reverse=True)
    for threshold, x, y in zip(thresholds[1:], fpr[1:], tpr[1:], strict=True):
        called = values >= threshold
        assert y == (called[truth].mean() if truth.any() else 0.0)
        assert x == (called[~truth].mean() if not truth.all() else 0.0)


@given(labelled_scores)
def test_roc_curve_is_monotone_and_ends_at_corners(data: tuple[list[bool], list[float]]) -> None:
    labels, scores = data
    fpr, tpr, _ = roc_curve(labels, scores)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(tpr) >= 0)
    if any(labels) and not all(labels):
        assert (fpr[-1], tpr[-1]) == (1.0, 1.0)


# Each resample is a scikit-learn call of a few milliseconds: no per-example deadline.
@settings(max_examples=25, deadline=None)
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


def test_calibration_bins_are_closed_on_the_right() -> None:
    # Bins [0, 0.1], (0.1, 0.2], ... (0.9, 1.0], as in sklearn.calibration.calibration_curve.
    mean, _, counts = calibration_bins([0, 1, 1, 0], [0.0, 0.1, 0.5, 0.51], n_bins=10)
    assert counts.tolist() == [2, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert mean[0] == pytest.approx(0.05)
    assert np.isnan(mean[1])


@given(labelled_scores, st.integers(1, 12))
def test_calibration_bins_follow_their_definition(
    data: tuple[list[bool], list[float]], n_bins: int
) -> None:
    labels, scores = data
    mean, observed, counts = calibration_bins(labels, scores, n_bins)
    truth, values = np.array(labels), np.array(scores)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    assert counts.sum() == len(scores)
    for k in range(n_bins):
        inside = (values > edges[k]) & (values <= edges[k + 1])
        if k == 0:
            inside |= values == 0.0
        assert counts[k] == inside.sum()
        if inside.any():
            assert mean[k] == pytest.approx(values[inside].mean())
            assert observed[k] == pytest.approx(truth[inside].mean())
        else:
            assert np.isnan(mean[k])
            assert np.isnan(observed[k])


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        auroc([1, 0], [0.1])

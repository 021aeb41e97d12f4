"""Metric functions against their definitions and against scikit-learn."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from training.metrics import (
    Confusion,
    auroc,
    bootstrap_auroc_ci,
    brier_score,
    calibration_bins,
    confusion,
    confusion_at,
    expected_calibration_error,
    roc_curve,
    wilson_interval,
)


@pytest.fixture(autouse=True, scope="module")
def _warm_scikit_learn() -> None:
    """Pay scikit-learn's one-off first-call cost (a scan for dataframe libraries, some
    hundreds of milliseconds) before Hypothesis starts timing examples against its deadline."""
    roc_curve([0, 1], [0.2, 0.8])


# Every metric is a scikit-learn or scipy call of some milliseconds, more on a loaded machine:
# Hypothesis's per-example deadline would time the machine, not the metric.
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


@settings(deadline=None)
@given(labelled_scores)
def test_auroc_matches_sklearn(data: tuple[list[bool], list[float]]) -> None:
    labels, scores = data
    value = auroc(labels, scores)
    if all(labels) or not any(labels):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@settings(deadline=None)
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
@settings(deadline=None)
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


@settings(deadline=None)
@given(st.tuples(*[st.integers(0, 50)] * 4))
def test_kappa_follows_its_definition(cells: tuple[int, int, int, int]) -> None:
    c = Confusion(*cells)
    if c.n == 0:
        assert math.isnan(c.kappa)
    elif c.n in (c.tp, c.tn):
        assert c.kappa == 1.0
    else:
        assert c.kappa == pytest.approx(_kappa_by_definition(c), abs=1e-12)


@settings(deadline=None)
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


@settings(deadline=None)
@given(labelled_scores)
def test_roc_curve_is_monotone_and_ends_at_corners(data: tuple[list[bool], list[float]]) -> None:
    labels, scores = data
    fpr, tpr, _ = roc_curve(labels, scores)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(tpr) >= 0)
    if any(labels) and not all(labels):
        assert (fpr[-1], tpr[-1]) == (1.0, 1.0)


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


@settings(deadline=None)
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


def test_wilson_interval_of_a_published_example() -> None:
    # 8 of 10 at 95 %: 0.490 to 0.943 (Newcombe, Statistics in Medicine 1998, method 3).
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)


def _wilson_by_definition(successes: int, total: int, level: float) -> tuple[float, float]:
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total**2))
    return centre - half, centre + half


@settings(deadline=None)
@given(
    st.integers(1, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.99]),
)
def test_wilson_interval_follows_its_definition(counts: tuple[int, int], level: float) -> None:
    successes, total = counts
    low, high = wilson_interval(successes, total, level)
    expected_low, expected_high = _wilson_by_definition(successes, total, level)
    assert low == pytest.approx(expected_low, abs=1e-9)
    assert high == pytest.approx(expected_high, abs=1e-9)
    assert 0.0 <= low <= successes / total <= high <= 1.0


def test_wilson_interval_without_data_is_undefined() -> None:
    low, high = wilson_interval(0, 0)
    assert math.isnan(low)
    assert math.isnan(high)


@pytest.mark.parametrize(
    ("successes", "total", "level"), [(3, 2, 0.95), (-1, 2, 0.95), (1, 2, 1.0)]
)
def test_wilson_interval_refuses_impossible_arguments(
    successes: int, total: int, level: float
) -> None:
    with pytest.raises(ValueError, match=str(successes) if level < 1 else "level"):
        wilson_interval(successes, total, level)


def test_brier_score_of_a_hand_computed_example() -> None:
    # ((1 - 0.8)^2 + (0 - 0.3)^2) / 2
    assert brier_score([1, 0], [0.8, 0.3]) == pytest.approx(0.065)


@settings(deadline=None)
@given(labelled_scores)
def test_brier_score_is_the_mean_squared_error(data: tuple[list[bool], list[float]]) -> None:
    labels, scores = data
    expected = np.mean((np.array(scores) - np.array(labels, dtype=float)) ** 2)
    assert brier_score(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_brier_score_without_data_is_undefined() -> None:
    assert math.isnan(brier_score([], []))


def test_expected_calibration_error_of_a_hand_computed_example() -> None:
    labels = [0, 1, 0, 1, 1]
    probabilities = [0.1, 0.3, 0.6, 0.8, 0.9]
    # Bin [0, 0.5]: 2 images, observed 1/2, mean 0.2 -> |gap| 0.3.
    # Bin (0.5, 1]: 3 images, observed 2/3, mean 2.3/3 -> |gap| 0.1.
    # Weighted: (2 * 0.3 + 3 * 0.1) / 5.
    assert expected_calibration_error(labels, probabilities, n_bins=2) == pytest.approx(0.18)


def test_expected_calibration_error_is_zero_when_each_bin_is_calibrated() -> None:
    labels = [1, 0, 0, 0, 1, 1, 1, 0]
    probabilities = [0.25] * 4 + [0.75] * 4
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.0)


@settings(deadline=None)
@given(labelled_scores, st.integers(1, 12))
def test_expected_calibration_error_is_a_weighted_mean_gap(
    data: tuple[list[bool], list[float]], n_bins: int
) -> None:
    labels, scores = data
    mean, observed, counts = calibration_bins(labels, scores, n_bins)
    filled = counts > 0
    gaps = np.abs(observed[filled] - mean[filled])
    value = expected_calibration_error(labels, scores, n_bins)
    assert value == pytest.approx(np.average(gaps, weights=counts[filled]))
    assert 0.0 <= value <= 1.0


def test_expected_calibration_error_without_data_is_undefined() -> None:
    assert math.isnan(expected_calibration_error([], []))


@pytest.mark.parametrize("metric", [brier_score, expected_calibration_error])
def test_new_metrics_refuse_a_shape_mismatch(metric: object) -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        metric([1, 0], [0.1])  # type: ignore[operator]

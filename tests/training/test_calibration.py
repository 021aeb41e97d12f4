"""Platt scaling and operating points."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.model_package import OperatingPointName
from training.calibration import (
    fit_platt,
    high_sensitivity_point,
    high_specificity_point,
    operating_points,
)
from training.metrics import confusion_at


def test_platt_recovers_known_parameters() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, 20_000)
    scores = 1.0 / (1.0 + np.exp(-logits))
    true_p = 1.0 / (1.0 + np.exp(-(0.5 * logits - 1.0)))
    labels = rng.random(logits.size) < true_p
    fitted = fit_platt(labels, scores)
    assert fitted.slope == pytest.approx(0.5, abs=0.05)
    assert fitted.intercept == pytest.approx(-1.0, abs=0.08)


def test_platt_stays_finite_on_separable_data() -> None:
    fitted = fit_platt([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert np.isfinite(fitted.slope)
    assert np.isfinite(fitted.intercept)
    assert fitted.apply([0.1])[0] < fitted.apply([0.9])[0]


def test_platt_turns_reversed_scores_around() -> None:
    fitted = fit_platt([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])
    assert -5.0 < fitted.slope < 0.0
    assert fitted.apply([0.1])[0] > fitted.apply([0.9])[0]


def test_platt_stays_moderate_on_saturated_scores() -> None:
    fitted = fit_platt([0, 1, 0, 1], [0.0, 1.0, 0.0, 1.0])
    assert 0.0 < fitted.slope < 1.0
    # Platt's targets: 3/4 for each positive, 1/4 for each negative.
    assert fitted.apply([1.0])[0] == pytest.approx(0.75, abs=1e-3)


def test_platt_of_constant_scores_is_the_smoothed_base_rate() -> None:
    fitted = fit_platt([0, 1, 1], [0.7, 0.7, 0.7])
    # Targets 3/4 for the two positives and 1/3 for the negative.
    assert fitted.apply([0.7])[0] == pytest.approx((2 * 0.75 + 1 / 3) / 3)


def test_platt_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_platt([1, 1], [0.2, 0.4])


data_sets = st.integers(4, 80).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda x: any(x) and not all(x)),
        st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n),
        st.floats(0.5, 1.0),
    )
)


@given(data_sets)
def test_operating_points_reach_their_targets_on_the_fitting_data(
    data: tuple[list[bool], list[float], float],
) -> None:
    labels, probabilities, target = data
    sens_point = high_sensitivity_point(labels, probabilities, target)
    reached = confusion_at(labels, probabilities, sens_point.threshold)
    assert reached.sensitivity >= target - 1e-12
    assert reached.sensitivity == sens_point.sensitivity
    assert reached.specificity == sens_point.specificity
    spec_point = high_specificity_point(labels, probabilities, target)
    reached = confusion_at(labels, probabilities, spec_point.threshold)
    if max(p for p, y in zip(probabilities, labels, strict=True) if not y) < 1.0:
        assert reached.specificity >= target - 1e-12
    assert reached.specificity == spec_point.specificity


def test_both_points_are_returned_with_their_targets() -> None:
    points = operating_points([0, 1, 0, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.9])
    assert set(points) == set(OperatingPointName)
    assert points[OperatingPointName.HIGH_SENSITIVITY].sensitivity == 1.0
    assert points[OperatingPointName.HIGH_SPECIFICITY].specificity == 1.0

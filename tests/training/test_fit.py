"""When a finished run may go on, and the class weights."""

from __future__ import annotations

import numpy as np
import pytest

from training.fit import RunState, StopReason, TrainConfig, balanced_class_weights, may_continue


def _state(reason: StopReason, epochs: int = 10, minutes: float = 30.0) -> RunState:
    return RunState(
        epochs_done=epochs,
        best_auroc=0.8,
        best_epoch=epochs,
        train_seconds=minutes * 60,
        finished=True,
        stop_reason=reason,
        history=[{"epoch": float(epochs), "seconds": 60.0}],
    )


@pytest.mark.parametrize(
    ("state", "config", "expected"),
    [
        (_state(StopReason.TIME_BUDGET), TrainConfig(epochs=50, time_budget_minutes=30), False),
        (_state(StopReason.TIME_BUDGET), TrainConfig(epochs=50, time_budget_minutes=45), True),
        (_state(StopReason.TIME_BUDGET), TrainConfig(epochs=50), True),
        (_state(StopReason.TIME_BUDGET), TrainConfig(epochs=10, time_budget_minutes=45), False),
        (_state(StopReason.ALL_EPOCHS), TrainConfig(epochs=10), False),
        (_state(StopReason.ALL_EPOCHS), TrainConfig(epochs=20), True),
        (_state(StopReason.EARLY_STOPPING), TrainConfig(epochs=20), False),
    ],
)
def test_may_continue(state: RunState, config: TrainConfig, expected: bool) -> None:
    assert may_continue(state, config) is expected


def test_balanced_class_weights_equalise_classes() -> None:
    labels = np.array([0] * 10 + [1] * 30, dtype=np.int64)
    weights = balanced_class_weights(labels, 3)
    assert weights[0] * 10 == pytest.approx(weights[1] * 30)
    assert weights[2] == 0.0

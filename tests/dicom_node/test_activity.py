"""The ingest activity that background work yields to: a burst, its quiet gap, its cap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicom_node.activity import IngestActivity


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_nothing_received_means_no_holding_back() -> None:
    assert IngestActivity(0.25, 10.0, Clock()).hold_back_s() == 0.0


def test_holds_back_for_the_rest_of_the_quiet_gap_after_the_last_data() -> None:
    clock = Clock()
    activity = IngestActivity(0.25, 10.0, clock)
    activity.touch()
    assert activity.hold_back_s() == pytest.approx(0.25)
    clock.now += 0.1
    assert activity.hold_back_s() == pytest.approx(0.15)
    clock.now += 0.15
    assert activity.hold_back_s() == 0.0


def test_a_long_burst_stops_holding_back_at_the_cap() -> None:
    clock = Clock()
    activity = IngestActivity(0.25, 10.0, clock)
    for _ in range(99):  # data every 0.1 s for 9.9 s: one uninterrupted burst
        activity.touch()
        clock.now += 0.1
    activity.touch()
    assert activity.hold_back_s() == pytest.approx(0.1)  # the cap is 0.1 s away
    clock.now += 0.1
    activity.touch()
    assert activity.hold_back_s() == 0.0  # past the cap: share the CPUs again


def test_a_quiet_gap_starts_a_new_burst_with_a_new_cap() -> None:
    clock = Clock()
    activity = IngestActivity(0.25, 1.0, clock)
    for _ in range(15):
        activity.touch()
        clock.now += 0.1
    assert activity.hold_back_s() == 0.0  # 1.5 s into the burst
    clock.now += 0.5  # the burst ended
    activity.touch()
    assert activity.hold_back_s() == pytest.approx(0.25)


def test_negative_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="-1"):
        IngestActivity(-1, 10.0)


@given(
    quiet=st.floats(0.0, 5.0),
    cap=st.floats(0.0, 60.0),
    gaps=st.lists(st.floats(0.0, 3.0), max_size=30),
    after=st.floats(0.0, 10.0),
)
def test_hold_back_never_exceeds_the_gap_or_the_cap(
    quiet: float, cap: float, gaps: list[float], after: float
) -> None:
    clock = Clock()
    activity = IngestActivity(quiet, cap, clock)
    for gap in gaps:
        clock.now += gap
        activity.touch()
    clock.now += after
    wait = activity.hold_back_s()
    assert 0.0 <= wait <= quiet
    assert wait <= cap

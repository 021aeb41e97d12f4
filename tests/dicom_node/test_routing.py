"""Routing: which destinations receive a study's results, as a table of cases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.settings import RoutingRule
from dicom_node.routing import RoutingCondition, StudyOutcome, choose_destinations

DESTINATIONS = ["pacs", "ris", "fracture-clinic"]

NEGATIVE = StudyOutcome(positive=False, high_specificity_positive=False)
POSITIVE = StudyOutcome(positive=True, high_specificity_positive=False)
STRONG = StudyOutcome(positive=True, high_specificity_positive=True)

ALWAYS_PACS = RoutingRule(when="always", destinations=["pacs"])
POSITIVE_RIS = RoutingRule(when="positive", destinations=["ris"])
STRONG_CLINIC = RoutingRule(when="high_specificity_positive", destinations=["fracture-clinic"])


@pytest.mark.parametrize(
    ("rules", "outcome", "expected"),
    [
        # No rules: everyone gets everything, whatever the result.
        ([], NEGATIVE, DESTINATIONS),
        ([], STRONG, DESTINATIONS),
        ([ALWAYS_PACS], NEGATIVE, ["pacs"]),
        ([POSITIVE_RIS], NEGATIVE, []),
        ([POSITIVE_RIS], POSITIVE, ["ris"]),
        ([STRONG_CLINIC], POSITIVE, []),
        ([STRONG_CLINIC], STRONG, ["fracture-clinic"]),
        ([ALWAYS_PACS, POSITIVE_RIS, STRONG_CLINIC], NEGATIVE, ["pacs"]),
        ([ALWAYS_PACS, POSITIVE_RIS, STRONG_CLINIC], POSITIVE, ["pacs", "ris"]),
        ([ALWAYS_PACS, POSITIVE_RIS, STRONG_CLINIC], STRONG, DESTINATIONS),
        # Order follows the configured destinations, not the rules; duplicates collapse.
        ([STRONG_CLINIC, ALWAYS_PACS], STRONG, ["pacs", "fracture-clinic"]),
        (
            [RoutingRule(when="always", destinations=["ris", "pacs"]), POSITIVE_RIS],
            POSITIVE,
            ["pacs", "ris"],
        ),
    ],
)
def test_routing_table(
    rules: list[RoutingRule], outcome: StudyOutcome, expected: list[str]
) -> None:
    assert choose_destinations(DESTINATIONS, rules, outcome) == expected


def test_no_destinations_means_nothing_is_sent() -> None:
    assert choose_destinations([], [], STRONG) == []


def test_rule_naming_an_unknown_destination_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown destinations"):
        choose_destinations(["pacs"], [POSITIVE_RIS], POSITIVE)


def test_conditions_match_configuration_words() -> None:
    pattern_words = {"always", "positive", "high_specificity_positive"}
    assert {c.value for c in RoutingCondition} == pattern_words


@given(
    positive=st.booleans(),
    strong=st.booleans(),
    rules=st.lists(
        st.builds(
            RoutingRule,
            when=st.sampled_from([c.value for c in RoutingCondition]),
            destinations=st.lists(st.sampled_from(DESTINATIONS), min_size=1, max_size=3),
        ),
        max_size=4,
    ),
)
def test_chosen_destinations_are_a_subset_in_configured_order(
    positive: bool, strong: bool, rules: list[RoutingRule]
) -> None:
    outcome = StudyOutcome(positive=positive, high_specificity_positive=strong)
    chosen = choose_destinations(DESTINATIONS, rules, outcome)
    assert chosen == [name for name in DESTINATIONS if name in chosen]
    if any(rule.when == "always" for rule in rules):
        always = {d for rule in rules if rule.when == "always" for d in rule.destinations}
        assert always <= set(chosen)

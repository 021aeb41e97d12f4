"""Which destinations receive a study's results: a pure function of the rules and the result.

With no rules configured every destination receives every study's results. Otherwise a
destination receives them when at least one rule naming it matches the study's result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from config.settings import RoutingRule


class RoutingCondition(StrEnum):
    """When a routing rule applies (the ``when`` of a rule)."""

    #: Every analysed study.
    ALWAYS = "always"
    #: The study is positive at the configured operating point.
    POSITIVE = "positive"
    #: The study is positive at the high-specificity operating point.
    HIGH_SPECIFICITY_POSITIVE = "high_specificity_positive"


@dataclass(frozen=True, slots=True)
class StudyOutcome:
    """What routing looks at: the study-level calls of one analysis."""

    positive: bool
    high_specificity_positive: bool


def rule_matches(condition: RoutingCondition, outcome: StudyOutcome) -> bool:
    """Whether a rule with this condition applies to a study with this outcome."""
    match condition:
        case RoutingCondition.ALWAYS:
            return True
        case RoutingCondition.POSITIVE:
            return outcome.positive
        case RoutingCondition.HIGH_SPECIFICITY_POSITIVE:
            return outcome.high_specificity_positive


def choose_destinations(
    destinations: Sequence[str], rules: Sequence[RoutingRule], outcome: StudyOutcome
) -> list[str]:
    """The names of the destinations that receive this study's results, in configured order.

    Parameters
    ----------
    destinations
        Names of the configured destinations.
    rules
        The routing rules; empty means every destination receives everything.
    outcome
        The study's result.

    Raises
    ------
    ValueError
        When a rule names a destination that is not configured, or has an unknown condition.
    """
    if not rules:
        return list(dict.fromkeys(destinations))
    known = set(destinations)
    chosen: set[str] = set()
    for rule in rules:
        unknown = sorted(set(rule.destinations) - known)
        if unknown:
            raise ValueError(f"routing rule names unknown destinations: {unknown}")
        if rule_matches(RoutingCondition(rule.when), outcome):
            chosen.update(rule.destinations)
    return [name for name in dict.fromkeys(destinations) if name in chosen]

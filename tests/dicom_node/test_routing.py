"""Routing: which destinations receive a study's results, as a table of cases."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from config.settings import RoutingRule, load_settings
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


DESTINATIONS_JSON = (
    '[{"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104},'
    ' {"name": "fracture-clinic", "ae_title": "CLINIC", "host": "10.0.0.9", "port": 11112,'
    '  "calling_ae_title": "FRACTUREGW2"}]'
)


def test_destinations_and_routing_from_environment_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FRACTURE_GATEWAY_HOME", str(tmp_path))
    monkeypatch.delenv("FRACTURE_GATEWAY_CONFIG", raising=False)
    monkeypatch.setenv("FRACTURE_GATEWAY_DESTINATIONS", DESTINATIONS_JSON)
    monkeypatch.setenv(
        "FRACTURE_GATEWAY_ROUTING",
        '[{"when": "always", "destinations": ["pacs"]},'
        ' {"when": "high_specificity_positive", "destinations": ["fracture-clinic"]}]',
    )
    monkeypatch.setenv("FRACTURE_GATEWAY_OUTBOX__MAX_ATTEMPTS", "3")
    settings = load_settings()
    assert [(d.name, d.ae_title, d.port, d.calling_ae_title) for d in settings.destinations] == [
        ("pacs", "PACS", 104, None),
        ("fracture-clinic", "CLINIC", 11112, "FRACTUREGW2"),
    ]
    assert settings.outbox.max_attempts == 3
    names = [d.name for d in settings.destinations]
    assert choose_destinations(names, settings.routing, STRONG) == names
    assert choose_destinations(names, settings.routing, POSITIVE) == ["pacs"]


def test_destinations_and_routing_from_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            """
            [[destinations]]
            name = "pacs"
            ae_title = "PACS"
            host = "10.0.0.5"
            port = 104

            [[routing]]
            when = "positive"
            destinations = ["pacs"]

            [outbox]
            backoff_base_s = 2.5
            """
        )
    )
    monkeypatch.setenv("FRACTURE_GATEWAY_HOME", str(tmp_path))
    monkeypatch.setenv("FRACTURE_GATEWAY_CONFIG", str(config))
    monkeypatch.delenv("FRACTURE_GATEWAY_DESTINATIONS", raising=False)
    monkeypatch.delenv("FRACTURE_GATEWAY_ROUTING", raising=False)
    settings = load_settings()
    assert [d.name for d in settings.destinations] == ["pacs"]
    assert choose_destinations(["pacs"], settings.routing, NEGATIVE) == []
    assert settings.outbox.backoff_base_s == 2.5


def test_routing_to_an_unknown_destination_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FRACTURE_GATEWAY_HOME", str(tmp_path))
    monkeypatch.delenv("FRACTURE_GATEWAY_CONFIG", raising=False)
    monkeypatch.setenv("FRACTURE_GATEWAY_DESTINATIONS", DESTINATIONS_JSON)
    monkeypatch.setenv("FRACTURE_GATEWAY_ROUTING", '[{"when": "always", "destinations": ["ris"]}]')
    with pytest.raises(ValidationError, match="unknown destinations"):
        load_settings()

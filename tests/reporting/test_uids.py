"""Deterministic result UIDs: valid syntax, stable, and distinct where they must differ."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reporting.uids import (
    MAX_ROOT_LENGTH,
    ResultKind,
    derive_uid,
    device_uid,
    is_valid_uid,
    result_uid,
    sc_instance_uid,
    sc_series_uid,
    sr_instance_uid,
    sr_series_uid,
    tracking_uid,
)

texts = st.text(max_size=80)
components = st.integers(min_value=0, max_value=10**12).map(str)
roots = (
    st.lists(components, min_size=2, max_size=6)
    .map(".".join)
    .filter(lambda root: len(root) <= MAX_ROOT_LENGTH)
)
uid_like = (
    st.lists(components, min_size=3, max_size=8).map(".".join).filter(lambda uid: len(uid) <= 64)
)


@given(st.lists(texts, max_size=6), st.one_of(st.none(), roots))
def test_derived_uids_are_valid_and_deterministic(parts: list[str], root: str | None) -> None:
    uid = derive_uid(*parts, root=root)
    assert is_valid_uid(uid)
    assert len(uid) <= 64
    assert all(c.isdigit() or c == "." for c in uid)
    assert all(part == "0" or not part.startswith("0") for part in uid.split("."))
    assert uid == derive_uid(*parts, root=root)
    if root is not None:
        assert uid.startswith(root + ".")


@given(uid_like, st.sampled_from(list(ResultKind)), st.sampled_from(list(ResultKind)), texts)
def test_kinds_give_distinct_uids(study: str, a: ResultKind, b: ResultKind, item: str) -> None:
    same = result_uid(a, study, "m", "1", item) == result_uid(b, study, "m", "1", item)
    assert same == (a == b)


@given(uid_like, texts, texts, texts, texts)
def test_models_and_versions_give_distinct_uids(
    study: str, name_a: str, name_b: str, version_a: str, version_b: str
) -> None:
    a = sc_series_uid(study, name_a, version_a)
    b = sc_series_uid(study, name_b, version_b)
    assert (a == b) == ((name_a, version_a) == (name_b, version_b))


@given(uid_like, st.lists(uid_like, min_size=2, max_size=5, unique=True))
def test_per_image_uids_are_distinct(study: str, sources: list[str]) -> None:
    uids = {sc_instance_uid(study, "m", "1", source) for source in sources}
    assert len(uids) == len(sources)
    series = sc_series_uid(study, "m", "1")
    assert series not in uids
    assert sr_series_uid(study, "m", "1") != series


@given(uid_like, st.lists(uid_like, min_size=2, max_size=6, unique=True), st.randoms())
def test_sr_uid_ignores_source_order_but_not_membership(
    study: str, sources: list[str], rng: Random
) -> None:
    shuffled = list(sources)
    rng.shuffle(shuffled)
    full = sr_instance_uid(study, "m", "1", sources)
    assert full == sr_instance_uid(study, "m", "1", shuffled)
    assert full != sr_instance_uid(study, "m", "1", sources[1:])


def test_ambiguous_concatenations_differ() -> None:
    assert derive_uid("ab", "c") != derive_uid("a", "bc")


def test_a_new_model_version_gives_new_uids() -> None:
    study = "1.2.3.4"
    assert sr_series_uid(study, "cnn", "1.0") != sr_series_uid(study, "cnn", "1.1")
    assert device_uid("fracture-cnn", "1.0") != device_uid("fracture-cnn", "1.1")
    assert tracking_uid(study, "m", "1", "study") != tracking_uid(study, "m", "1", "1.2.3.4.5")


def test_known_value_is_stable_across_releases() -> None:
    """A change here would make a resend after an upgrade create duplicates in the PACS."""
    assert sr_series_uid("1.2.3", "fracture-cnn", "1.0") == derive_uid(
        "fracture-gateway/result", "sr-series", "1.2.3", "fracture-cnn", "1.0", ""
    )
    assert derive_uid("x").startswith("2.25.")


@pytest.mark.parametrize("root", ["", "1.02.3", "1..2", "1.2.", "a.b", "1." + "2" * 60])
def test_invalid_roots_are_refused(root: str) -> None:
    with pytest.raises(ValueError, match="UID root"):
        derive_uid("x", root=root)


@pytest.mark.parametrize(
    ("value", "valid"),
    [("1.2.840.10008.1.2", True), ("0.1", True), ("1.02", False), ("1.2.", False), ("", False)],
)
def test_uid_syntax_check(value: str, valid: bool) -> None:
    assert is_valid_uid(value) is valid

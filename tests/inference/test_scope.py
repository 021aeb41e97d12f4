"""The out-of-scope guard: chest, skull and animal radiographs are not applicable."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from inference.errors import NotAnalysable, Reason
from inference.scope import FRACATLAS_BODY_PARTS, check_in_scope
from tests.helpers.inventory import read_inventory


def header(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("part", ["CHEST", "THORAX", "SKULL", "CSPINE", "ABDOMEN", "HEAD"])
def test_body_parts_outside_the_model_are_not_applicable(part: str) -> None:
    with pytest.raises(NotAnalysable) as raised:
        check_in_scope(header(BodyPartExamined=part), FRACATLAS_BODY_PARTS)
    assert raised.value.reason == Reason.OUT_OF_SCOPE
    assert part in raised.value.message


@pytest.mark.parametrize("part", ["HAND", "hip", "SHOULDER", "LEG ", "EXTREMITY", ""])
def test_covered_or_unstated_body_parts_are_analysed(part: str) -> None:
    check_in_scope(header(BodyPartExamined=part), FRACATLAS_BODY_PARTS)
    check_in_scope(header(), FRACATLAS_BODY_PARTS)


def test_a_model_without_a_stated_scope_takes_any_body_part() -> None:
    check_in_scope(header(BodyPartExamined="CHEST"), ())


def test_a_veterinary_radiograph_is_not_applicable() -> None:
    dog = header(BodyPartExamined="HAND", PatientSpeciesDescription="Canine")
    with pytest.raises(NotAnalysable, match="not human"):
        check_in_scope(dog, FRACATLAS_BODY_PARTS)
    coded = Dataset()
    coded.CodeValue, coded.CodingSchemeDesignator, coded.CodeMeaning = "448771007", "SCT", "Dog"
    with pytest.raises(NotAnalysable, match="not human"):
        check_in_scope(header(PatientSpeciesCodeSequence=[coded]), ())


def test_a_human_species_is_analysed() -> None:
    human = Dataset()
    human.CodeValue, human.CodingSchemeDesignator = "337915000", "SCT"
    human.CodeMeaning = "Homo sapiens"
    check_in_scope(header(PatientSpeciesCodeSequence=[human]), FRACATLAS_BODY_PARTS)
    check_in_scope(header(PatientSpeciesDescription="Homo sapiens"), FRACATLAS_BODY_PARTS)


def test_an_odd_body_part_value_is_not_echoed() -> None:
    with pytest.raises(NotAnalysable) as raised:
        check_in_scope(header(BodyPartExamined="SMITH^JOHN CHEST"), FRACATLAS_BODY_PARTS)
    assert "SMITH" not in raised.value.message


def test_on_the_shared_radiographs_chests_and_spines_are_refused_limbs_are_not(
    shared_dir: Path,
) -> None:
    refused, analysed = set(), set()
    for row in read_inventory(shared_dir):
        if "RADIOGRAPH" not in row.tags:
            continue
        ds = pydicom.dcmread(row.path, stop_before_pixels=True)
        part = str(ds.get("BodyPartExamined") or "").upper()
        try:
            check_in_scope(ds, FRACATLAS_BODY_PARTS)
            analysed.add(part)
        except NotAnalysable:
            refused.add(part)
    assert refused == {"CHEST", "THORAX", "CSPINE"}
    assert {"HAND", "HIP", "EXTREMITY"} <= analysed

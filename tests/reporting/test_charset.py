"""Every Specific Character Set pydicom reads gets a result, written in the right one."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataelem import DataElement

from reporting.charset import DEFINED_TERMS, UTF8, defined_term, result_character_set
from tests.reporting.conftest import (
    DX_MONOCHROME1,
    build_study,
    dciodvfy,
    make_findings,
    read_source,
)

#: A patient's name in each character set (PN: family^given, ideographic and phonetic groups).
NAMES = {
    "ISO_IR 100": "Müller^Jürgen",
    "ISO_IR 101": "Dvořák^Antonín",
    "ISO_IR 109": "Ġużeppi^Ħanna",
    "ISO_IR 110": "Ķēniņš^Jānis",
    "ISO_IR 144": "Люксембург^Ольга",
    "ISO_IR 127": "قباني^لنزار",
    "ISO_IR 126": "Διονυσιος",
    "ISO_IR 138": "שרון^דבורה",
    "ISO_IR 148": "Öztürk^Şükrü",
    "ISO_IR 13": "ﾔﾏﾀﾞ^ﾀﾛｳ",
    "ISO_IR 166": "สมชาย^ใจดี",
    "ISO 2022 IR 6": "Doe^John",
    "ISO 2022 IR 87": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "ISO 2022 IR 159": "Yamada^Tarou=鸁",
    "ISO 2022 IR 149": "Hong^Gildong=洪^吉洞=홍^길동",
    "ISO 2022 IR 58": "Wang^XiaoDong=王^小东",
    "ISO_IR 192": "Wang^XiaoDong=王^小東",
    "GB18030": "Wang^XiaoDong=王^小东",
    "GBK": "Wang^XiaoDong=王^小东",
}
for _term in list(NAMES):
    if _term.startswith("ISO_IR ") and _term != "ISO_IR 192":
        NAMES.setdefault(_term.replace("ISO_IR ", "ISO 2022 IR "), NAMES[_term])

#: Multi-byte sets with code extensions follow the default repertoire (PS3.3 C.12.1.1.2).
MULTI_BYTE = {"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"}

#: Where the result's character set is not the source's, and why.
EXPECTED = {
    # A lone ISO 2022 single-byte set is the same set without code extensions (same bytes).
    **{
        f"ISO 2022 IR {n}": f"ISO_IR {n}"
        for n in ("100", "101", "109", "110", "144", "127", "126", "138", "148", "13", "166")
    },
    "ISO 2022 IR 6": None,
    # pydicom 3.0 cannot encode JIS X 0212, and reads back GB 2312 it wrote as Latin-1.
    "ISO 2022 IR 159": UTF8,
    "ISO 2022 IR 58": UTF8,
}

#: dciodvfy's own gaps, not the objects': it rejects the half-width katakana of ISO_IR 13 (JIS X
#: 0201, G1) that it accepts under ISO 2022 IR 13, and it does not know GBK.
VALIDATOR_GAPS = {"ISO_IR 13", "ISO 2022 IR 13", "GBK"}
CHARACTER_ERROR = re.compile(r"Character invalid for character repertoire")


def source_in(shared_dir: Path, character_set: str | list[str], name: str) -> Dataset:
    source = read_source(shared_dir, DX_MONOCHROME1)
    source.BodyPartExamined = "HAND"
    source["SpecificCharacterSet"] = DataElement(
        0x00080005, "CS", character_set, validation_mode=pydicom.config.IGNORE
    )
    source.PatientName = name
    return source


def test_the_terms_are_those_pydicom_reads() -> None:
    assert {"ISO 2022 IR 87", "ISO 2022 IR 149", "ISO_IR 192", "GB18030"} <= DEFINED_TERMS
    assert DEFINED_TERMS - {""} == set(NAMES)
    assert defined_term("ISO-IR 100") == "ISO_IR 100"
    assert defined_term("ISO 2022-IR 87") == "ISO 2022 IR 87"
    assert defined_term("KOI8-R") is None
    assert defined_term("ISO_IR 203") is None  # a defined term pydicom has no codec for


@pytest.mark.integration
@pytest.mark.parametrize("term", sorted(NAMES))
def test_every_character_set_gets_a_valid_result(
    term: str, shared_dir: Path, tmp_path: Path
) -> None:
    name = NAMES[term]
    character_set: str | list[str] = ["", term] if term in MULTI_BYTE else term
    source = source_in(shared_dir, character_set, name)
    built = build_study("cs", make_findings([source], [0.8]), tmp_path)
    expected = EXPECTED.get(term, character_set)
    for path in (*built.sc_paths, built.sr_path):
        read = pydicom.dcmread(path)
        assert read.get("SpecificCharacterSet") == expected, path.name
        assert str(read.PatientName) == name, path.name
        errors = dciodvfy(path).errors
        if term in VALIDATOR_GAPS:
            errors = [e for e in errors if not CHARACTER_ERROR.search(e)]
            errors = [e for e in errors if "invalid data values" not in e]
        assert errors == [], f"{term} {path.name}: {errors}"


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("ISO-IR 100", "ISO_IR 100"),  # misspelt, read by pydicom: written as defined
        ("ISO_IR 203", UTF8),  # no codec in pydicom: what it decoded is written in UTF-8
        ("KOI8-R", UTF8),  # not DICOM at all
    ],
)
def test_misspelt_and_unknown_character_sets(
    declared: str, expected: str, shared_dir: Path, tmp_path: Path
) -> None:
    source = source_in(shared_dir, declared, "Doe^John")
    built = build_study("odd", make_findings([source], [0.8]), tmp_path)
    for path in (*built.sc_paths, built.sr_path):
        read = pydicom.dcmread(path)
        assert read.SpecificCharacterSet == expected
        assert str(read.PatientName) == "Doe^John"
        assert dciodvfy(path).errors == [], path.name


def test_undeclared_eight_bit_text_is_declared_as_read(shared_dir: Path) -> None:
    """A source without a character set but with Latin-1 bytes (read by pydicom as such)."""
    source = read_source(shared_dir, DX_MONOCHROME1)
    result = copy.deepcopy(source)
    result.PatientName = "Müller^Jürgen"
    assert result_character_set(source, result) == "ISO_IR 100"
    result.PatientName = "Doe^John"
    assert result_character_set(source, result) is None


def test_empty_text_elements_need_no_character_set(shared_dir: Path) -> None:
    """An empty Type 2 element (the presentation state's Content Creator's Name) is None before
    it is written and empty after: it has nothing to encode and must not force UTF-8."""
    source = read_source(shared_dir, DX_MONOCHROME1)
    result = copy.deepcopy(source)
    result.PatientName = "Doe^John"
    result.add(DataElement(0x00700084, "PN", None))  # Content Creator's Name
    result.add(DataElement(0x00081030, "LO", ""))  # Study Description
    assert result_character_set(source, result) is None
    result.ContentCreatorName = "Müller^Jürgen"
    assert result_character_set(source, result) == "ISO_IR 100"

"""The Specific Character Set (0008,0005) of a result object, and the check that it holds.

A result carries text copied from its source (the patient's name, the institution) and text we
write (descriptions, the SR's content). Its Specific Character Set must name an encoding in
which all of that text can be written (PS3.3 C.12.1.1.2, PS3.5 6.1). The rule:

1. the source's character set, each value spelled as the standard defines it (pydicom reads
   common misspellings such as ``ISO-IR 100`` and ``ISO 2022-IR 87``; we write the defined
   term), so a PACS gets the names back in the encoding it sent; a lone single-byte
   ``ISO 2022 IR nnn`` is written ``ISO_IR nnn`` (the same bytes);
2. a source without one whose copied text is nevertheless not ASCII gets ``ISO_IR 100``: pydicom
   read those bytes as Latin-1, so the bytes are written back unchanged and now declared;
3. ``ISO_IR 192`` (UTF-8) when the source names a character set pydicom does not know, or when
   the finished object's text does not survive a write and read in the source's character set.

The character set is applied to the finished object, after every text element is set; the
object-building library is given none (it refuses valid values such as an empty first value
with ISO 2022 code extensions, and it does not know ``ISO 2022 IR 149``).
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterator
from typing import BinaryIO, cast

from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue

_SINGLE_BYTE = ("100", "101", "109", "110", "144", "127", "126", "138", "148", "203", "13", "166")
#: The defined terms of PS3.3 Tables C.12-2 to C.12-5 that pydicom reads and writes (it has no
#: codec for ISO_IR 203). The empty value stands for the default repertoire as the first value
#: of a multi-valued Specific Character Set.
DEFINED_TERMS = frozenset(
    term
    for term in (
        "",
        *(f"ISO_IR {number}" for number in _SINGLE_BYTE),
        "ISO 2022 IR 6",
        *(f"ISO 2022 IR {number}" for number in _SINGLE_BYTE),
        *(f"ISO 2022 IR {number}" for number in ("87", "159", "149", "58")),
        "ISO_IR 192",
        "GB18030",
        "GBK",
    )
    if term in python_encoding
)
UTF8 = "ISO_IR 192"
LATIN1 = "ISO_IR 100"

#: Value representations whose values are text in the Specific Character Set (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_SINGLE_BYTE_MISSPELLING = re.compile(r"^ISO[^_]IR(?P<rest>.*)$")
_EXTENSION_MISSPELLING = re.compile(r"^ISO.2022.IR.(?P<rest>.*)$")

CharacterSet = str | list[str] | None


def defined_term(value: str) -> str | None:
    """The defined term ``value`` stands for, correcting what pydicom corrects; None if unknown.

    >>> defined_term("ISO-IR 100"), defined_term("ISO 2022-IR 87"), defined_term("KOI8")
    ('ISO_IR 100', 'ISO 2022 IR 87', None)
    """
    value = value.strip()
    if value in DEFINED_TERMS:
        return value
    for pattern, prefix in (
        (_SINGLE_BYTE_MISSPELLING, "ISO_IR"),
        (_EXTENSION_MISSPELLING, "ISO 2022 IR "),
    ):
        match = pattern.match(value)
        if match:
            patched = prefix + match["rest"]
            return patched if patched in DEFINED_TERMS else None
    return None


def source_character_set(source: Dataset) -> tuple[CharacterSet, bool]:
    """The source's character set in defined terms, and whether pydicom knows every value."""
    raw = source.get("SpecificCharacterSet")
    if raw is None or raw == "" or raw == []:
        return None, True
    values = [str(v) for v in raw] if isinstance(raw, MultiValue | list | tuple) else [str(raw)]
    terms = [defined_term(v) for v in values]
    known = [t for t in terms if t is not None]
    if len(known) != len(terms):
        return None, False
    if len(known) == 1:
        return _without_code_extensions(known[0]), True
    return known, True


def _without_code_extensions(term: str) -> str | None:
    """A lone ISO 2022 single-byte term as the same character set without code extensions.

    The bytes are the same; only one character set is in use, so no escape sequence is needed,
    and validators expect one after an ISO 2022 term. ``ISO 2022 IR 6`` alone is the default
    repertoire (no Specific Character Set).
    """
    if term == "ISO 2022 IR 6":
        return None
    plain = term.replace("ISO 2022 IR ", "ISO_IR ")
    return plain if plain != term and plain in DEFINED_TERMS else term


def _text_values(dataset: Dataset, path: str = "") -> Iterator[tuple[str, str]]:
    """Every non-empty text value of ``dataset`` and its items, with where it is (for
    comparison). Empty values are left out: an empty element is ``None`` before it is written
    and an empty string after it is read, and has no characters to encode either way."""
    for element in dataset:
        where = f"{path}{element.tag}"
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from _text_values(item, f"{where}[{index}].")
        elif element.VR in _TEXT_VRS and element.value is not None:
            values = element.value if isinstance(element.value, MultiValue) else [element.value]
            for value in values:
                text = str(value)
                if text:
                    yield where, text


def _is_ascii(dataset: Dataset) -> bool:
    return all(value.isascii() for _, value in _text_values(dataset))


def survives_round_trip(dataset: Dataset, character_set: CharacterSet) -> bool:
    """Whether every text value of ``dataset`` reads back unchanged when written in
    ``character_set`` (pydicom's encoder, then its decoder). Bulk data is left out."""
    probe = Dataset()
    for element in dataset:
        if element.VR in _TEXT_VRS or element.VR == "SQ":
            # Copies: pydicom caches a person name's first encoding in the value object, and
            # adding a sequence to a data set re-parents it.
            probe.add(copy.deepcopy(element))
    if character_set is not None:
        probe.SpecificCharacterSet = character_set
    stream = DicomBytesIO()
    stream.is_little_endian, stream.is_implicit_VR = True, False
    try:
        with warnings.catch_warnings():
            # pydicom warns and substitutes '?' for what it cannot encode: detected below.
            warnings.simplefilter("ignore")
            write_dataset(stream, probe)
            stream.seek(0)
            read = read_dataset(cast(BinaryIO, stream), is_implicit_VR=False, is_little_endian=True)
            read_values = list(_text_values(read))
    except (UnicodeError, ValueError, LookupError, TypeError):
        # pydicom's JIS X 0212 (ISO 2022 IR 159) encoder raises TypeError (pydicom 3.0).
        return False
    expected = list(_text_values(probe))
    return read_values == expected


def result_character_set(source: Dataset, result: Dataset) -> CharacterSet:
    """The Specific Character Set ``result`` (built from ``source``) is written in.

    See the module's docstring for the rule.
    """
    character_set, known = source_character_set(source)
    if not known:
        return UTF8
    if character_set is None and not _is_ascii(result):
        character_set = LATIN1
    if survives_round_trip(result, character_set):
        return character_set
    return UTF8


def apply_character_set(source: Dataset, result: Dataset) -> None:
    """Set the finished ``result``'s Specific Character Set (0008,0005) from ``source``'s."""
    character_set = result_character_set(source, result)
    if character_set is None:
        if "SpecificCharacterSet" in result:
            del result.SpecificCharacterSet
        return
    result.SpecificCharacterSet = character_set

"""What a result does with a patient or study value that is invalid for its VR in the source.

Results copy the source's Patient and Study attributes (:mod:`reporting.headers`); some senders
put values there that their VR does not allow (a 56-character Accession Number in an SH, a hash
as Patient's Birth Date). The policy, one rule per attribute and never a "repaired" value:

- **identifiers** the PACS files a result with (:data:`MATCHING_KEYS`) are kept verbatim: a
  result must land in the patient's own study, so it never carries identifiers that differ
  from the source's, even when a validator reports them;
- any other attribute the result IOD requires with a value (Type 1, 1C) is kept verbatim too,
  as leaving it empty would break the object worse than the value does;
- an attribute required but allowed empty (Type 2, 2C) is emptied, and an optional one
  (Type 3) is left out: an invalid value carries no information.

Each case is reported as a :class:`CopiedValueIssue` naming the attribute keyword, what was done
and why, without the value, so that it can be logged. Values are checked with pydicom's own
validators (:mod:`pydicom.valuerep`) and Patient's Sex against its enumerated values
(PS3.3 C.7.1.1); sequence items are not looked into.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Any, cast

# highdicom's own tables of PS3.3, by which it copies these attributes (a private module).
from highdicom._standard_utils import (
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from highdicom.enum import PatientSexValues
from pydicom import DataElement, Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.valuerep import MAX_VALUE_LEN, VALIDATORS, PersonName, validate_vr_length

#: Attributes a PACS matches results on (patient, order and study): copied verbatim, always.
MATCHING_KEYS = frozenset(
    {
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "StudyInstanceUID",
        "AccessionNumber",
        "StudyID",
    }
)

#: Attributes checked against their enumerated values as well as their VR.
_ENUMERATED = {"PatientSex": frozenset(value.value for value in PatientSexValues)}

_INFORMATION_ENTITIES = ("Patient", "Study")

_Validator = Callable[[str, Any], tuple[bool, str]]


class Action(Enum):
    """What the result does with a value that is invalid for its VR."""

    KEPT = "kept as received"
    EMPTIED = "left empty"
    OMITTED = "left out"


@dataclass(frozen=True, slots=True)
class CopiedValueIssue:
    """One copied attribute whose source value is invalid: keyword, action and reason, no value."""

    keyword: str
    action: Action
    reason: str

    def __str__(self) -> str:
        return f"{self.keyword} {self.action.value}: {self.reason}"


@cache
def _attribute_types(sop_class_uid: str) -> dict[str, str]:
    """Type (1, 1C, 2, 2C, 3) of each top-level Patient and Study attribute of an IOD.

    The module tables are those highdicom copies the attributes by (PS3.3 Annex A).
    """
    iod = get_sop_class_iod_map()[sop_class_uid]
    modules = get_module_attribute_map()
    types: dict[str, str] = {}
    for module in get_iod_module_map()[iod]:
        if module["ie"] not in _INFORMATION_ENTITIES:
            continue
        for attribute in modules[module["key"]]:
            if not attribute["path"]:
                types[str(attribute["keyword"])] = str(attribute["type"])
    return types


def _values(value: Any) -> Iterator[Any]:
    """Each value of a possibly multi-valued element, as the text it was received as."""
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    for item in items:
        if item is None or item == "":
            continue
        if isinstance(item, PersonName):
            # pydicom's PN validator accepts any PersonName object; check its text instead.
            yield str(item)
        else:
            # DS and IS values keep the string they were read from.
            yield getattr(item, "original_string", item)


def invalid_reason(keyword: str, vr: str, value: Any) -> str | None:
    """Why ``value`` is invalid for ``vr`` (or for the attribute's enumerated values), else None.

    The reason never contains the value. pydicom's validators decide; their messages, which can
    quote the value, are not used.
    """
    validator = cast(_Validator | None, VALIDATORS.get(vr))
    for item in _values(value):
        if validator is not None and not validator(vr, item)[0]:
            if isinstance(item, str | bytes) and not validate_vr_length(vr, item)[0]:
                return f"{vr} longer than {MAX_VALUE_LEN[vr]}"
            return f"not a valid {vr} value"
        allowed = _ENUMERATED.get(keyword)
        if allowed is not None and item not in allowed:
            return f"not one of {', '.join(sorted(allowed))}"
    return None


def apply_policy(source: Dataset, target: Dataset) -> list[CopiedValueIssue]:
    """Keep, empty or leave out each Patient and Study value of ``target`` invalid for its VR.

    ``target`` holds the attributes copied from ``source`` (the same elements); elements are
    replaced or deleted in ``target`` only, never changed in place, so ``source`` is untouched.

    Returns
    -------
    list[CopiedValueIssue]
        One entry per attribute whose value is invalid, in tag order.
    """
    types = _attribute_types(str(target.SOPClassUID))
    issues = []
    for element in list(target):
        keyword = keyword_for_tag(element.tag)
        if keyword not in types or element.tag not in source or element.VR == "SQ":
            continue
        reason = invalid_reason(keyword, element.VR, element.value)
        if reason is None:
            continue
        if keyword in MATCHING_KEYS or types[keyword] in ("1", "1C"):
            action = Action.KEPT
        elif types[keyword] in ("2", "2C"):
            action = Action.EMPTIED
            target[element.tag] = DataElement(element.tag, element.VR, None)
        else:
            action = Action.OMITTED
            del target[element.tag]
        issues.append(CopiedValueIssue(keyword, action, reason))
    return issues

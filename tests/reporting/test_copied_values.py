"""Source patient and study values invalid for their VR: identifiers kept verbatim, other values
emptied or left out, each case logged without the value (docs/CONFORMANCE-RESULTS.md)."""

from __future__ import annotations

import copy
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import DataElement, Dataset
from pydicom.config import IGNORE

from reporting import uids
from reporting.copied_values import Action, CopiedValueIssue, apply_policy, invalid_reason
from reporting.gsps import build_gsps
from tests.reporting.conftest import (
    ALGORITHM,
    DX_MONOCHROME1,
    build_study,
    dciodvfy,
    make_findings,
    read_source,
)

#: A DX whose Accession Number is a 56-character hash (SH allows 16) and whose Patient's Birth
#: Date is the same hash (not a DA).
HASHED_DX = "pylibjpeg-data/ljdata/ds/JPEG2000Lossless/966_fixed.dcm"

INVALID_VR_ERROR = "Error - Dicom dataset contains invalid data values for Value Representations"


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "reason"),
    [
        ("AccessionNumber", "SH", "A" * 16, None),
        ("AccessionNumber", "SH", "A" * 17, "SH longer than 16"),
        ("PatientID", "LO", "1" * 65, "LO longer than 64"),
        ("PatientBirthDate", "DA", "19700101", None),
        ("PatientBirthDate", "DA", "", None),
        ("PatientBirthDate", "DA", "d14a028c2a3a", "not a valid DA value"),
        ("PatientBirthDate", "DA", "19701301", "not a valid DA value"),
        ("StudyTime", "TM", "250000", "not a valid TM value"),
        ("PatientSex", "CS", "F", None),
        ("PatientSex", "CS", "X", "not one of F, M, O"),
        ("PatientSex", "CS", "f", "not a valid CS value"),
        ("PatientAge", "AS", "042Y", None),
        ("PatientAge", "AS", "42", "not a valid AS value"),
        ("PatientWeight", "DS", "72.5", None),
        ("PatientWeight", "DS", "heavy", "not a valid DS value"),
        ("ReferringPhysicianName", "PN", "Doe^Jane", None),
        ("ReferringPhysicianName", "PN", "D" * 65, "not a valid PN value"),
        ("ReferringPhysicianName", "PN", "a=b=c=d", "not a valid PN value"),
        ("OtherPatientNames", "PN", ["Doe^Jane", "E" * 65], "not a valid PN value"),
    ],
)
def test_invalid_reason_names_the_rule_never_the_value(
    keyword: str, vr: str, value: Any, reason: str | None
) -> None:
    found = invalid_reason(keyword, vr, value)
    assert found == reason
    for item in value if isinstance(value, list) else [value]:
        if found is not None and len(item) > 3:
            assert item not in found


@dataclass
class BuiltResults:
    """Results built from one source, written to disk, and the warnings logged meanwhile."""

    source: Dataset
    datasets: dict[str, Dataset]
    paths: dict[str, Path]
    records: list[logging.LogRecord]


def received(dataset: Dataset) -> Dataset:
    """``dataset`` written and read back, as a stored instance is read by the pipeline."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def build_all(source: Dataset, directory: Path, caplog: pytest.LogCaptureFixture) -> BuiltResults:
    """SC, SR and GSPS from ``source``, as the pipeline builds them, capturing every log record."""
    findings = make_findings([source], [0.8])
    study_uid = findings.study_instance_uid
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        study = build_study("vr", findings, directory)
        gsps = build_gsps(
            findings.images[0],
            findings,
            series_instance_uid=uids.gsps_series_uid(study_uid, ALGORITHM.name, ALGORITHM.version),
            sop_instance_uid=uids.gsps_instance_uid(
                study_uid, ALGORITHM.name, ALGORITHM.version, str(source.SOPInstanceUID)
            ),
            instance_number=1,
        )
    gsps_path = directory / "vr-gsps.dcm"
    gsps.save_as(gsps_path, enforce_file_format=True)
    return BuiltResults(
        source=source,
        datasets={"sc": study.scs[0], "sr": study.sr, "gsps": gsps},
        paths={"sc": study.sc_paths[0], "sr": study.sr_path, "gsps": gsps_path},
        records=list(caplog.records),
    )


def logged_issues(built: BuiltResults) -> dict[str, set[str]]:
    """The issues logged for each result, keyed by the result's SOP Instance UID."""
    logged: dict[str, set[str]] = {}
    for record in built.records:
        if record.name == "reporting.headers":
            uid, _, rest = record.getMessage().removeprefix("result ").partition(" ")
            logged.setdefault(uid, set()).add(rest.split(": source value of ", 1)[1])
    return logged


def assert_no_patient_value_logged(built: BuiltResults, keywords: tuple[str, ...]) -> None:
    """No log record of any logger quotes one of the source's values of ``keywords``."""
    values = {str(built.source[keyword].value) for keyword in keywords}
    # A value of a few characters (Patient's Sex) would be found in any text.
    values = {value for value in values if len(value) >= 4}
    assert len(values) >= 3
    for record in built.records:
        message = record.getMessage()
        for value in values:
            assert value not in message, f"{record.name} logged a patient value"


def dciodvfy_errors(built: BuiltResults) -> dict[str, set[str]]:
    return {name: set(dciodvfy(path).errors) for name, path in built.paths.items()}


@pytest.fixture
def hashed_dx(shared_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> BuiltResults:
    return build_all(read_source(shared_dir, HASHED_DX), tmp_path, caplog)


@pytest.mark.integration
def test_results_of_a_hashed_source_keep_only_the_accession_number_error(
    hashed_dx: BuiltResults,
) -> None:
    """Accession Number stays verbatim (dciodvfy reports it); the Birth Date hash is dropped."""
    accession = str(hashed_dx.source.AccessionNumber)
    expected = {
        "Error - Value invalid for this VR - (0x0008,0x0050) SH Accession Number  SH [1] = "
        f"<{accession}> - Length invalid for this VR = 56, expected <= 16",
        INVALID_VR_ERROR,
    }
    assert dciodvfy_errors(hashed_dx) == {"sc": expected, "sr": expected, "gsps": expected}
    for name, dataset in hashed_dx.datasets.items():
        read = pydicom.dcmread(hashed_dx.paths[name])
        for result in (dataset, read):
            assert result.AccessionNumber == accession, name
            assert result.PatientName == hashed_dx.source.PatientName, name
            assert result.PatientID == hashed_dx.source.PatientID, name
            assert "PatientBirthDate" in result, name
            assert result.PatientBirthDate in ("", None), name


def test_results_of_a_hashed_source_log_each_case_without_the_value(
    hashed_dx: BuiltResults,
) -> None:
    expected = {
        "AccessionNumber kept as received: SH longer than 16",
        "PatientBirthDate left empty: not a valid DA value",
    }
    assert logged_issues(hashed_dx) == {
        str(dataset.SOPInstanceUID): expected for dataset in hashed_dx.datasets.values()
    }
    assert_no_patient_value_logged(
        hashed_dx, ("AccessionNumber", "PatientBirthDate", "PatientName", "PatientID")
    )
    # The source itself is untouched: the results replaced elements, never changed them.
    assert hashed_dx.source.PatientBirthDate == hashed_dx.source.AccessionNumber


#: Values invalid for their VR in a pydicom-made source, and what the results do with each.
LONG_STUDY_ID = "STUDY-0123456789AB"  # 18 characters, SH allows 16
LONG_PATIENT_ID = "PID-" + "7" * 62  # 66 characters, LO allows 64
INVALID_VALUES: dict[str, tuple[str, str, str | None]] = {
    # keyword: (VR, value, what the result holds: the value, "" or None when left out)
    "StudyID": ("SH", LONG_STUDY_ID, LONG_STUDY_ID),
    "PatientID": ("LO", LONG_PATIENT_ID, LONG_PATIENT_ID),
    "PatientBirthDate": ("DA", "1970-01-01", ""),
    "PatientSex": ("CS", "X", ""),
    "ReferringPhysicianName": ("PN", "Referring" * 8, ""),
    "PatientAge": ("AS", "42 years", None),
}
EXPECTED_ISSUES = {
    "StudyID kept as received: SH longer than 16",
    "PatientID kept as received: LO longer than 64",
    "PatientBirthDate left empty: not a valid DA value",
    "PatientSex left empty: not one of F, M, O",
    "ReferringPhysicianName left empty: not a valid PN value",
    "PatientAge left out: not a valid AS value",
}


@pytest.fixture
def invalid_dx(shared_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> BuiltResults:
    source = read_source(shared_dir, DX_MONOCHROME1)
    for keyword, (vr, value, _) in INVALID_VALUES.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        assert tag is not None
        source[tag] = DataElement(tag, vr, value, validation_mode=IGNORE)
    return build_all(received(source), tmp_path, caplog)


@pytest.mark.integration
def test_results_of_an_invalid_source_keep_only_the_identifier_errors(
    invalid_dx: BuiltResults,
) -> None:
    expected = {
        "Error - Value invalid for this VR - (0x0010,0x0020) LO Patient ID  LO [1] = "
        f"<{LONG_PATIENT_ID}> - Length invalid for this VR = 66, expected <= 64",
        "Error - Value invalid for this VR - (0x0020,0x0010) SH Study ID  SH [1] = "
        f"<{LONG_STUDY_ID}> - Length invalid for this VR = 18, expected <= 16",
        INVALID_VR_ERROR,
    }
    assert dciodvfy_errors(invalid_dx) == {"sc": expected, "sr": expected, "gsps": expected}
    for name, dataset in invalid_dx.datasets.items():
        read = pydicom.dcmread(invalid_dx.paths[name])
        for result in (dataset, read):
            for keyword, (_, _, held) in INVALID_VALUES.items():
                if held is None:
                    assert keyword not in result, (name, keyword)
                else:
                    assert keyword in result, (name, keyword)
                    assert str(result[keyword].value or "") == held, (name, keyword)


def test_results_of_an_invalid_source_log_each_case_without_the_value(
    invalid_dx: BuiltResults,
) -> None:
    assert logged_issues(invalid_dx) == {
        str(dataset.SOPInstanceUID): EXPECTED_ISSUES for dataset in invalid_dx.datasets.values()
    }
    assert_no_patient_value_logged(
        invalid_dx, tuple(keyword for keyword in INVALID_VALUES if keyword != "PatientSex")
    )


def test_apply_policy_reports_nothing_for_a_valid_source(shared_dir: Path) -> None:
    source = read_source(shared_dir, DX_MONOCHROME1)
    target = copy.deepcopy(source)
    target.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    before = copy.deepcopy(target)
    assert apply_policy(source, target) == []
    assert target == before


def test_an_issue_reads_as_keyword_action_and_reason() -> None:
    issue = CopiedValueIssue("PatientSex", Action.EMPTIED, "not one of F, M, O")
    assert str(issue) == "PatientSex left empty: not one of F, M, O"

"""TID 1500 SR built from real radiographs: validity, content, evidence, round trip."""

from __future__ import annotations

import copy
import re
import subprocess

import numpy as np
import pydicom
import pytest
from highdicom.sr import Comprehensive3DSR, MeasurementReport, ValueTypeValues
from highdicom.sr.utils import find_content_items
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from reporting.codes import (
    ABSENT,
    FRACTURE,
    FRACTURE_PROBABILITY,
    LOCAL_SCHEME_DESIGNATOR,
    PLAIN_RADIOGRAPHY,
    PRESENT,
    THRESHOLD_VALUE,
    body_part_code,
)
from reporting.findings import ResultInputError
from reporting.sr import algorithm_parameters, build_sr, procedure_reported
from tests.reporting.conftest import (
    ALGORITHM,
    NON_ASCII_NAME,
    OPERATING_POINT,
    STUDY_CASES,
    BuiltStudy,
    assert_round_trip,
    dciodvfy,
    require_tool,
)

#: dciodvfy warnings we accept, each explained in docs/CONFORMANCE-RESULTS.md.
ALLOWED_SR_WARNINGS = (
    # The probability concept is coded in this project's local ("99") coding scheme.
    re.compile(
        rf"Unrecognized defined term <{LOCAL_SCHEME_DESIGNATOR}> for value 1 of attribute "
        r"<Coding Scheme Designator>"
    ),
)


@pytest.fixture(params=STUDY_CASES)
def study(request: pytest.FixtureRequest, built_studies: dict[str, BuiltStudy]) -> BuiltStudy:
    return built_studies[request.param]


def report_of(sr: Dataset) -> MeasurementReport:
    content = Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(content, MeasurementReport)
    return content


def num_values(group: Dataset, name: pydicom.sr.coding.Code) -> list[float]:
    items = find_content_items(group, name=name, value_type=ValueTypeValues.NUM)
    return [float(item.MeasuredValueSequence[0].NumericValue) for item in items]


@pytest.mark.integration
def test_sr_passes_dciodvfy_without_errors(study: BuiltStudy) -> None:
    verdict = dciodvfy(study.sr_path)
    assert verdict.errors == []
    unexplained = [
        line
        for line in verdict.warnings
        if not any(allowed.search(line) for allowed in ALLOWED_SR_WARNINGS)
    ]
    assert unexplained == [], f"undocumented warnings {unexplained}"


@pytest.mark.integration
def test_sr_parses_with_dsrdump(study: BuiltStudy) -> None:
    tool = require_tool("dsrdump")
    result = subprocess.run(
        [tool, "-Ee", str(study.sr_path)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr
    assert "Imaging Measurement Report" in result.stdout
    assert "Probability of fracture" in result.stdout


def test_sr_round_trips_through_a_file(study: BuiltStudy) -> None:
    read = assert_round_trip(study.sr, study.sr_path)
    assert read.SOPClassUID == Comprehensive3DSRStorage
    assert report_of(read) is not None


def test_sr_header_flags_series_and_patient(study: BuiltStudy) -> None:
    sr = study.sr
    source = study.findings.images[0].source
    assert (sr.Modality, sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "SR",
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID"):
        assert sr[keyword].value == source[keyword].value, keyword
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.get("SpecificCharacterSet") == source.get("SpecificCharacterSet")
    assert sr.SeriesInstanceUID not in {
        image.source.SeriesInstanceUID for image in study.findings.images
    }
    assert sr.SeriesInstanceUID != study.scs[0].SeriesInstanceUID


def test_sr_lists_sources_and_secondary_captures_as_evidence(study: BuiltStudy) -> None:
    evidence = {sop for _, _, sop, _ in Comprehensive3DSR.from_dataset(study.sr).get_evidence()}
    sources = {str(image.source.SOPInstanceUID) for image in study.findings.images}
    captures = {str(sc.SOPInstanceUID) for sc in study.scs}
    assert evidence == sources | captures
    assert "CurrentRequestedProcedureEvidenceSequence" in study.sr
    assert "PertinentOtherEvidenceSequence" not in study.sr


def test_sr_has_one_group_per_image_and_a_study_group(study: BuiltStudy) -> None:
    report = report_of(study.sr)
    groups = report.get_image_measurement_groups()
    findings = study.findings
    assert len(groups) == len(findings.images) + 1
    for group, image in zip(groups, findings.images, strict=False):
        (source_ref,) = group.source_images
        assert source_ref.referenced_sop_instance_uid == image.source.SOPInstanceUID
        assert num_values(group[0], FRACTURE_PROBABILITY) == [pytest.approx(image.probability)]
        assert num_values(group[0], THRESHOLD_VALUE) == [pytest.approx(OPERATING_POINT.threshold)]
        (evaluation,) = group.get_qualitative_evaluations(name=FRACTURE)
        assert evaluation.value == (PRESENT if image.positive else ABSENT)
    study_group = groups[-1]
    assert study_group.tracking_identifier == "Study fracture assessment"
    assert num_values(study_group[0], FRACTURE_PROBABILITY) == [
        pytest.approx(findings.study_probability)
    ]
    (evaluation,) = study_group.get_qualitative_evaluations(name=FRACTURE)
    assert evaluation.value == (PRESENT if findings.study_positive else ABSENT)


def test_sr_identifies_the_algorithm(study: BuiltStudy) -> None:
    report = report_of(study.sr)
    (observer,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    attributes = observer.observer_identifying_attributes
    assert attributes.manufacturer_name == ALGORITHM.manufacturer
    assert attributes.model_name == f"{ALGORITHM.name} {ALGORITHM.version}"
    for group in report.get_image_measurement_groups():
        texts = {
            (item.name.value, item.value)
            for item in find_content_items(group[0], value_type=ValueTypeValues.TEXT)
        }
        assert ("111001", ALGORITHM.name) in texts
        assert ("111003", ALGORITHM.version) in texts
        assert ("111002", "operating_point=high_sensitivity") in texts
        assert ("111002", "threshold=0.35") in texts
        assert ("111002", "input_size=512") in texts
    (ours,) = [
        item
        for item in study.sr.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == ALGORITHM.name
    ]
    assert ours.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert ours.SoftwareVersions == ALGORITHM.version
    (scheme,) = study.sr.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == LOCAL_SCHEME_DESIGNATOR


def test_sr_finding_site_follows_body_part(built_studies: dict[str, BuiltStudy]) -> None:
    hip = report_of(built_studies["rg2_uncompressed"].sr).get_image_measurement_groups()[0]
    assert [site.value.value for site in hip.finding_sites] == ["29836001"]
    chest = report_of(built_studies["dx_monochrome1"].sr).get_image_measurement_groups()[0]
    assert [site.value.value for site in chest.finding_sites] == ["816094009"]


def test_sr_keeps_a_non_ascii_patient_name(built_studies: dict[str, BuiltStudy]) -> None:
    for case, encoding in (("utf8_name", "utf-8"), ("latin1_name", "latin-1")):
        study = built_studies[case]
        read = pydicom.dcmread(study.sr_path)
        assert str(read.PatientName) == NON_ASCII_NAME
        assert NON_ASCII_NAME.encode(encoding) in study.sr_path.read_bytes()


def test_sr_refuses_secondary_captures_of_another_study(
    built_studies: dict[str, BuiltStudy],
) -> None:
    study = built_studies["dx_monochrome1"]
    foreign = built_studies["rg2_uncompressed"].scs
    with pytest.raises(ResultInputError, match="must belong to the reported study"):
        build_sr(
            study.findings,
            sc_datasets=foreign,
            series_instance_uid="1.2.3",
            sop_instance_uid="1.2.3.4",
        )


def test_sr_without_secondary_captures_lists_only_sources(
    built_studies: dict[str, BuiltStudy],
) -> None:
    study = built_studies["rle_two_images"]
    sr = build_sr(
        study.findings, sc_datasets=[], series_instance_uid="1.2.3", sop_instance_uid="1.2.3.4"
    )
    evidence = {sop for _, _, sop, _ in Comprehensive3DSR.from_dataset(sr).get_evidence()}
    assert evidence == {str(image.source.SOPInstanceUID) for image in study.findings.images}


def test_procedure_reported_prefers_the_source_procedure_code(
    built_studies: dict[str, BuiltStudy],
) -> None:
    source = built_studies["dx_monochrome1"].findings.images[0].source
    assert [c.value for c in procedure_reported(source)] == [PLAIN_RADIOGRAPHY.value]
    with_code = copy.deepcopy(source)
    item = Dataset()
    item.CodeValue = "RPID2475"
    item.CodingSchemeDesignator = "RADLEX"
    item.CodeMeaning = "XR Wrist 3 views"
    with_code.ProcedureCodeSequence = [item]
    (concept,) = procedure_reported(with_code)
    assert (concept.value, concept.scheme_designator) == ("RPID2475", "RADLEX")


@pytest.mark.parametrize(
    ("body_part", "expected"),
    [("HAND", "85562004"), ("WRIST", "74670003"), ("ANKLE", "70258002"), ("LEG", "30021000")],
)
def test_body_part_maps_to_snomed(body_part: str, expected: str) -> None:
    source = Dataset()
    source.BodyPartExamined = body_part
    code = body_part_code(source)
    assert code is not None
    assert code.value == expected


@pytest.mark.parametrize("body_part", [None, "", "NOTAPART"])
def test_unknown_body_part_gives_no_finding_site(body_part: str | None) -> None:
    source = Dataset()
    if body_part is not None:
        source.BodyPartExamined = body_part
    assert body_part_code(source) is None


def test_algorithm_parameters_list_the_operating_point_first(
    built_studies: dict[str, BuiltStudy],
) -> None:
    parameters = algorithm_parameters(built_studies["dx_monochrome1"].findings)
    assert parameters[:4] == [
        "operating_point=high_sensitivity",
        "threshold=0.35",
        "validation_sensitivity=0.95",
        "validation_specificity=0.61",
    ]
    assert parameters[4:] == ["calibration=platt", "input_size=512"]


def test_sr_has_a_region_group_with_a_box_on_the_source_per_suspected_fracture(
    built_studies: dict[str, BuiltStudy],
) -> None:
    study = built_studies["rle_two_images"]
    groups = report_of(study.sr).get_planar_roi_measurement_groups()
    positive = [image for image in study.findings.images if image.regions]
    assert len(positive) == 1
    assert len(groups) == len(positive[0].regions) == 2
    for group, region in zip(groups, positive[0].regions, strict=True):
        roi = group.roi
        assert roi is not None
        assert roi.graphic_type.value == "POLYLINE"
        corners = np.asarray(roi.value, dtype=np.float64).reshape(-1, 2)
        assert corners[0].tolist() == pytest.approx([region.x0, region.y0], abs=0.01)
        assert corners[2].tolist() == pytest.approx([region.x1, region.y1], abs=0.01)
        assert corners[0].tolist() == pytest.approx(corners[-1].tolist())
        source = roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert source.ReferencedSOPInstanceUID == positive[0].source.SOPInstanceUID
        assert num_values(group[0], FRACTURE_PROBABILITY) == [
            pytest.approx(region.probability, abs=1e-6)
        ]
        assert ", ".join(region.operating_points) in group.tracking_identifier


def test_sr_of_a_negative_study_has_no_region_groups(
    built_studies: dict[str, BuiltStudy],
) -> None:
    report = report_of(built_studies["rg2_uncompressed"].sr)
    assert report.get_planar_roi_measurement_groups() == []

"""Grad-CAM Secondary Captures built from real radiographs: validity, content, round trip."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from reporting.codes import UNPAIRED_BODY_PARTS
from reporting.findings import ResultInputError
from reporting.render import render_png
from reporting.sc import (
    NEGATIVE_HEADLINE,
    POSITIVE_HEADLINE,
    REVIEW_NOTICE,
    ResultLaterality,
    banner_text,
    build_gradcam_sc,
    render_gradcam,
    result_laterality,
)
from tests.conftest import REPO_ROOT
from tests.reporting.conftest import (
    NON_ASCII_NAME,
    RG2_UNCOMPRESSED,
    RG3_RLE,
    STUDY_CASES,
    BuiltStudy,
    assert_round_trip,
    build_study,
    dciodvfy,
    make_findings,
    read_source,
)

#: dciodvfy warnings we accept, each explained in docs/CONFORMANCE-RESULTS.md.
ALLOWED_SC_WARNINGS = (
    # Body Part Examined is copied unchanged from the source, which may use non-defined terms.
    re.compile(r"Unrecognized defined term <[^>]*> for value 1 of attribute <Body Part Examined>"),
    # Laterality is empty (unknown) when the source gives none for a paired body part.
    re.compile(r"is only permitted to be empty when actually unknown.*attribute <Laterality>"),
)

PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)


@pytest.fixture(params=STUDY_CASES)
def study(request: pytest.FixtureRequest, built_studies: dict[str, BuiltStudy]) -> BuiltStudy:
    return built_studies[request.param]


@pytest.mark.integration
def test_every_sc_passes_dciodvfy_without_errors(study: BuiltStudy) -> None:
    for path in study.sc_paths:
        verdict = dciodvfy(path)
        assert verdict.errors == [], f"{path.name}: {verdict.errors}"
        unexplained = [
            line
            for line in verdict.warnings
            if not any(allowed.search(line) for allowed in ALLOWED_SC_WARNINGS)
        ]
        assert unexplained == [], f"{path.name}: undocumented warnings {unexplained}"


def test_sc_round_trips_through_a_file(study: BuiltStudy) -> None:
    for sc, path in zip(study.scs, study.sc_paths, strict=True):
        read = assert_round_trip(sc, path)
        assert read.file_meta.MediaStorageSOPInstanceUID == sc.SOPInstanceUID
        assert np.array_equal(read.pixel_array, sc.pixel_array)


def test_sc_is_an_rgb_secondary_capture_with_burned_in_result(study: BuiltStudy) -> None:
    for image, sc in zip(study.findings.images, study.scs, strict=True):
        assert sc.SOPClassUID == SecondaryCaptureImageStorage
        assert sc.Modality == "OT"
        assert sc.BurnedInAnnotation == "YES"
        assert sc.PhotometricInterpretation == "RGB"
        assert (sc.SamplesPerPixel, sc.BitsAllocated, sc.BitsStored) == (3, 8, 8)
        assert "DERIVED" in sc.ImageType
        assert REVIEW_NOTICE in sc.ImageComments
        expected = POSITIVE_HEADLINE if image.positive else NEGATIVE_HEADLINE
        assert expected in sc.ImageComments
        assert sc.Manufacturer == study.findings.algorithm.manufacturer
        assert sc.ManufacturerModelName == study.findings.algorithm.name
        assert sc.SoftwareVersions == study.findings.algorithm.version


def test_sc_copies_patient_and_study_and_has_its_own_series(study: BuiltStudy) -> None:
    for image, sc in zip(study.findings.images, study.scs, strict=True):
        for keyword in PATIENT_STUDY_KEYWORDS:
            assert (keyword in sc) == (keyword in image.source), keyword
            if keyword in image.source:
                assert sc[keyword].value == image.source[keyword].value, keyword
        assert sc.SeriesInstanceUID != image.source.SeriesInstanceUID
        assert sc.SOPInstanceUID != image.source.SOPInstanceUID
    assert len({sc.SeriesInstanceUID for sc in study.scs}) == 1


def test_sc_references_its_source_image(study: BuiltStudy) -> None:
    for image, sc in zip(study.findings.images, study.scs, strict=True):
        (item,) = sc.SourceImageSequence
        assert item.ReferencedSOPInstanceUID == image.source.SOPInstanceUID
        assert item.ReferencedSOPClassUID == image.source.SOPClassUID
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"


def test_sc_names_the_algorithm_as_processing_equipment(study: BuiltStudy) -> None:
    for sc in study.scs:
        ours = [
            item
            for item in sc.ContributingEquipmentSequence
            if item.get("ManufacturerModelName") == study.findings.algorithm.name
        ]
        assert len(ours) == 1
        assert ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert ours[0].SoftwareVersions == study.findings.algorithm.version


def test_sc_keeps_the_radiograph_aspect_ratio(study: BuiltStudy) -> None:
    for image, sc in zip(study.findings.images, study.scs, strict=True):
        rendering = render_gradcam(image, study.findings)
        assert (sc.Rows, sc.Columns) == rendering.rgb.shape[:2]
        box = rendering.image_box
        source_ratio = image.source.Columns / image.source.Rows
        # Within one pixel of rounding on the shorter side.
        assert abs(box.width / box.height - source_ratio) <= 1.0 / min(box.width, box.height)
        assert max(box.width, box.height) <= 2048


@pytest.mark.parametrize("case", ["utf8_name", "latin1_name"])
def test_non_ascii_patient_name_survives_the_file(
    case: str, built_studies: dict[str, BuiltStudy]
) -> None:
    study = built_studies[case]
    charset = study.findings.images[0].source.SpecificCharacterSet
    read = pydicom.dcmread(study.sc_paths[0])
    assert read.SpecificCharacterSet == charset
    assert str(read.PatientName) == NON_ASCII_NAME
    encoding = "utf-8" if charset == "ISO_IR 192" else "latin-1"
    assert NON_ASCII_NAME.encode(encoding) in study.sc_paths[0].read_bytes()


def test_laterality_comes_from_the_source_or_stays_unknown(
    built_studies: dict[str, BuiltStudy],
) -> None:
    dx = built_studies["dx_monochrome1"]
    # The DX source has an empty Laterality and Image Laterality L: the SC says L per image.
    assert result_laterality(dx.findings.images[0].source) == ResultLaterality("L", None)
    assert dx.scs[0].ImageLaterality == "L"
    assert "Laterality" not in dx.scs[0]
    rg2 = built_studies["rg2_uncompressed"]  # a hip, side not given: unknown
    assert result_laterality(rg2.findings.images[0].source) == ResultLaterality(None, "")
    assert rg2.scs[0].Laterality == ""
    assert "ImageLaterality" not in rg2.scs[0]


#: Sources that state a Laterality (or a body part that has none), as the shared files have them
#: and as a PACS may send them.
LATERALITY_SOURCES = {
    "extremity R (RG3)": (RG3_RLE, {}),
    "cervical spine, empty Laterality (pydicom CR1)": (
        "pydicom/src/pydicom/data/test_files/dicomdirtests/77654033/CR1/6154",
        {},
    ),
    "pelvis marked R": (RG3_RLE, {"BodyPartExamined": "PELVIS", "Laterality": "R"}),
    "chest, empty Laterality": (RG2_UNCOMPRESSED, {"BodyPartExamined": "CHEST"}),
    "hip, lower-case l": (RG2_UNCOMPRESSED, {"Laterality": "l"}),
    "hand, Image Laterality B": (
        RG2_UNCOMPRESSED,
        {"BodyPartExamined": "HAND", "ImageLaterality": "B"},
    ),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(LATERALITY_SOURCES))
def test_sc_from_a_source_with_laterality_passes_dciodvfy(
    case: str, shared_dir: Path, tmp_path: Path
) -> None:
    """The SC of a cervical spine with an empty Laterality carried that Laterality, which
    dciodvfy refuses for an unpaired body part ("present when condition unsatisfied")."""
    relative, changes = LATERALITY_SOURCES[case]
    source = read_source(shared_dir, relative)
    for keyword, value in changes.items():
        setattr(source, keyword, value)
    built = build_study("lat", make_findings([source], [0.8]), tmp_path)
    verdict = dciodvfy(built.sc_paths[0])
    assert verdict.errors == [], f"{case}: {verdict.errors}"


@pytest.mark.integration
@pytest.mark.parametrize("term", sorted(UNPAIRED_BODY_PARTS | {"HAND", "KNEE", "RIB"}))
def test_unpaired_body_parts_agree_with_dciodvfy(
    term: str, shared_dir: Path, tmp_path: Path
) -> None:
    """Our table of unpaired structures is the validator's: no Laterality where none may be,
    an empty one where one must be."""
    source = read_source(shared_dir, RG2_UNCOMPRESSED)
    source.BodyPartExamined = term
    del source.Laterality
    built = build_study("part", make_findings([source], [0.8]), tmp_path)
    sc = built.scs[0]
    assert ("Laterality" in sc) is (term not in UNPAIRED_BODY_PARTS)
    errors = dciodvfy(built.sc_paths[0]).errors
    assert errors == [], f"{term}: {errors}"


def test_banner_states_result_probability_operating_point_and_model(
    built_studies: dict[str, BuiltStudy],
) -> None:
    study = built_studies["rle_two_images"]
    positive, negative = study.findings.images
    text = banner_text(positive, study.findings)
    assert text.headline == POSITIVE_HEADLINE
    assert text.positive
    joined = "\n".join(text.lines)
    assert REVIEW_NOTICE in joined
    assert "0.91" in joined
    assert "high_sensitivity" in joined
    assert "0.35" in joined
    assert "fracture-cnn 1.4.0" in joined
    assert banner_text(negative, study.findings).headline == NEGATIVE_HEADLINE


def test_a_finding_from_another_study_is_refused(built_studies: dict[str, BuiltStudy]) -> None:
    foreign = built_studies["dx_monochrome1"].findings.images[0]
    study = built_studies["rg2_uncompressed"].findings
    with pytest.raises(ResultInputError, match="not one of the study's images"):
        build_gradcam_sc(
            foreign,
            study,
            series_instance_uid="1.2.3",
            sop_instance_uid="1.2.3.4",
            instance_number=1,
        )


def test_building_does_not_touch_the_source(built_studies: dict[str, BuiltStudy]) -> None:
    source = built_studies["dx_monochrome1"].findings.images[0].source
    before = pydicom.Dataset(source)
    findings = make_findings([source], [0.5])
    build_gradcam_sc(
        findings.images[0],
        findings,
        series_instance_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
        instance_number=1,
    )
    assert source == before


def test_save_a_rendering_to_look_at(built_studies: dict[str, BuiltStudy]) -> None:
    """Writes test-artifacts/reporting-sc-*.png for people to inspect (git-ignored)."""
    artifacts = Path(REPO_ROOT / "test-artifacts")
    artifacts.mkdir(exist_ok=True)
    for name in ("dx_monochrome1", "rle_two_images"):
        for number, sc in enumerate(built_studies[name].scs, start=1):
            png = render_png(sc.pixel_array)
            assert png.startswith(b"\x89PNG\r\n\x1a\n")
            (artifacts / f"reporting-sc-{name}-{number}.png").write_bytes(png)

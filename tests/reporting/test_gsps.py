"""Grayscale Softcopy Presentation States of real radiographs: validity, content, round trip, and
what a real presentation-state renderer (dcmtk's ``dcmp2pgm``) makes of them.

``dcmp2pgm`` reads a presentation state with dcmtk's ``DVPresentationState`` and applies its
Modality LUT, VOI, Presentation LUT, displayed area, spatial transformation, shutters and bitmap
overlays; it does not draw graphic or text annotations (it lists them with ``--verbose``). So the
renderer tests check that the presentation state shows the radiograph exactly as the image alone
is shown (the image's VOI kept, MONOCHROME1 not negated), that the renderer really applies our
values (a changed window or Presentation LUT changes the picture), and that dcmtk's reader finds
our layers, boxes and texts where we put them.
"""

from __future__ import annotations

import copy
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage

from reporting import uids
from reporting.findings import FindingRegion, ResultInputError
from reporting.gsps import CONTENT_LABEL, FindingLayer, build_gsps, layer_of, region_text
from tests.reporting.conftest import (
    ALGORITHM,
    NON_ASCII_NAME,
    RG2_UNCOMPRESSED,
    STUDY_CASES,
    BuiltStudy,
    assert_round_trip,
    build_study,
    dciodvfy,
    make_findings,
    read_source,
    require_tool,
)
from tests.reporting.test_sc import ALLOWED_SC_WARNINGS, PATIENT_STUDY_KEYWORDS

#: A MONOCHROME2 CR with suspected fractures (the shared study of this CR is negative).
RG2_POSITIVE = "rg2_positive"
#: Cases whose sources dcmp2pgm can decode (it has no RLE decoder): MONOCHROME1 and 2.
RENDERED_CASES = ("dx_monochrome1", RG2_POSITIVE, "utf8_name")


@dataclass
class BuiltGsps:
    """The presentation states of one test study's images that have regions."""

    study: BuiltStudy
    datasets: list[Dataset]
    paths: list[Path]
    sources: list[Dataset]
    source_paths: list[Path]


@pytest.fixture(scope="session")
def built_gsps(
    built_studies: dict[str, BuiltStudy],
    shared_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, BuiltGsps]:
    """Every test study's presentation states, built and written once for the session."""
    directory = tmp_path_factory.mktemp("gsps")
    studies = dict(built_studies)
    studies[RG2_POSITIVE] = build_study(
        RG2_POSITIVE,
        make_findings([read_source(shared_dir, RG2_UNCOMPRESSED)], [0.8]),
        directory / RG2_POSITIVE,
    )
    built: dict[str, BuiltGsps] = {}
    for name, study in studies.items():
        findings = study.findings
        study_uid = findings.study_instance_uid
        datasets, paths, sources, source_paths = [], [], [], []
        for number, image in enumerate(findings.images, start=1):
            if not image.regions:
                continue
            source_uid = str(image.source.SOPInstanceUID)
            gsps = build_gsps(
                image,
                findings,
                series_instance_uid=uids.gsps_series_uid(
                    study_uid, ALGORITHM.name, ALGORITHM.version
                ),
                sop_instance_uid=uids.gsps_instance_uid(
                    study_uid, ALGORITHM.name, ALGORITHM.version, source_uid
                ),
                instance_number=number,
            )
            path = directory / f"{name}-gsps{number}.dcm"
            gsps.save_as(path, enforce_file_format=True)
            source_path = directory / f"{name}-source{number}.dcm"
            image.source.save_as(source_path, enforce_file_format=True)
            datasets.append(gsps)
            paths.append(path)
            sources.append(image.source)
            source_paths.append(source_path)
        built[name] = BuiltGsps(study, datasets, paths, sources, source_paths)
    return built


CASES_WITH_REGIONS = ("dx_monochrome1", "rle_two_images", "utf8_name", RG2_POSITIVE)


@pytest.fixture(params=CASES_WITH_REGIONS)
def case(request: pytest.FixtureRequest, built_gsps: dict[str, BuiltGsps]) -> BuiltGsps:
    built = built_gsps[request.param]
    assert built.datasets, f"{request.param} should have an image with regions"
    return built


def test_only_images_with_regions_get_one(built_gsps: dict[str, BuiltGsps]) -> None:
    for name in STUDY_CASES:
        images = built_gsps[name].study.findings.images
        sources = [str(image.source.SOPInstanceUID) for image in images if image.regions]
        built = [str(source.SOPInstanceUID) for source in built_gsps[name].sources]
        assert built == sources, name
    assert built_gsps["rg2_uncompressed"].datasets == []  # a negative image: nothing to show


@pytest.mark.integration
def test_every_gsps_passes_dciodvfy_without_errors(case: BuiltGsps) -> None:
    for path in case.paths:
        verdict = dciodvfy(path)
        assert verdict.errors == [], f"{path.name}: {verdict.errors}"
        unexplained = [
            line
            for line in verdict.warnings
            if not any(allowed.search(line) for allowed in ALLOWED_SC_WARNINGS)
        ]
        assert unexplained == [], f"{path.name}: undocumented warnings {unexplained}"


@pytest.mark.integration
def test_dcmtk_checks_the_presentation_state(case: BuiltGsps) -> None:
    tool = require_tool("dcmpschk")
    for path in case.paths:
        result = subprocess.run(
            [tool, str(path)], capture_output=True, text=True, errors="replace", check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "Test passed" in output, output


def test_gsps_round_trips_through_a_file(case: BuiltGsps) -> None:
    for gsps, path in zip(case.datasets, case.paths, strict=True):
        read = assert_round_trip(gsps, path)
        assert read.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
        assert read.file_meta.MediaStorageSOPInstanceUID == gsps.SOPInstanceUID
        assert read.Modality == "PR"
        assert read.ContentLabel == CONTENT_LABEL


def test_gsps_copies_patient_and_study_and_has_its_own_series(case: BuiltGsps) -> None:
    for gsps, source in zip(case.datasets, case.sources, strict=True):
        for keyword in PATIENT_STUDY_KEYWORDS:
            assert gsps.get(keyword) == source.get(keyword), keyword
        assert gsps.SeriesInstanceUID != source.SeriesInstanceUID
        assert gsps.SeriesInstanceUID == uids.gsps_series_uid(
            str(source.StudyInstanceUID), ALGORITHM.name, ALGORITHM.version
        )
        assert gsps.SeriesNumber == 9902
        assert gsps.Manufacturer == ALGORITHM.manufacturer


@pytest.mark.parametrize(("name", "charset"), [("utf8_name", "ISO_IR 192")])
def test_non_ascii_patient_name_survives_the_file(
    built_gsps: dict[str, BuiltGsps], name: str, charset: str
) -> None:
    built = built_gsps[name]
    raw = built.paths[0].read_bytes()
    assert NON_ASCII_NAME.encode("utf-8") in raw
    read = pydicom.dcmread(built.paths[0])
    assert read.SpecificCharacterSet == charset
    assert str(read.PatientName) == NON_ASCII_NAME


def test_gsps_references_its_source_image(case: BuiltGsps) -> None:
    for gsps, source in zip(case.datasets, case.sources, strict=True):
        (series,) = gsps.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == source.SeriesInstanceUID
        (image,) = series.ReferencedImageSequence
        assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert image.ReferencedSOPClassUID == source.SOPClassUID
        for annotation in gsps.GraphicAnnotationSequence:
            (target,) = annotation.ReferencedImageSequence
            assert target.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_gsps_keeps_the_source_grey_scale(case: BuiltGsps) -> None:
    for gsps, source in zip(case.datasets, case.sources, strict=True):
        (voi,) = gsps.SoftcopyVOILUTSequence
        assert float(voi.WindowCenter) == float(source.WindowCenter)
        assert float(voi.WindowWidth) == float(source.WindowWidth)
        expected = "INVERSE" if source.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
        assert gsps.PresentationLUTShape == expected
        (area,) = gsps.DisplayedAreaSelectionSequence
        assert list(area.DisplayedAreaBottomRightHandCorner) == [source.Columns, source.Rows]


def _objects(gsps: Dataset, layer: FindingLayer) -> tuple[list[Dataset], list[Dataset]]:
    annotations = [a for a in gsps.GraphicAnnotationSequence if a.GraphicLayer == layer.value]
    if not annotations:
        return [], []
    (annotation,) = annotations
    return list(annotation.GraphicObjectSequence), list(annotation.TextObjectSequence)


def _box(region: FindingRegion) -> list[float]:
    x0, y0, x1, y1 = region.x0, region.y0, region.x1, region.y1
    return [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0]


def test_each_region_is_a_box_with_its_probability_in_its_layer(case: BuiltGsps) -> None:
    for gsps, image in zip(
        case.datasets, [i for i in case.study.findings.images if i.regions], strict=True
    ):
        layers = {item.GraphicLayer: item for item in gsps.GraphicLayerSequence}
        assert set(layers) == {layer.value for layer in FindingLayer}
        # The solid layer is drawn on top, and both have a colour and a grey for the viewer.
        spec = layers[FindingLayer.HIGH_SPECIFICITY.value]
        sens = layers[FindingLayer.HIGH_SENSITIVITY.value]
        assert int(spec.GraphicLayerOrder) > int(sens.GraphicLayerOrder)
        for item in layers.values():
            assert len(item.GraphicLayerRecommendedDisplayCIELabValue) == 3
            assert "GraphicLayerRecommendedDisplayGrayscaleValue" in item
        for layer, dashing in (
            (FindingLayer.HIGH_SPECIFICITY, "SOLID"),
            (FindingLayer.HIGH_SENSITIVITY, "DASHED"),
        ):
            expected = [
                (index, region)
                for index, region in enumerate(image.regions, start=1)
                if layer_of(region) is layer
            ]
            graphics, texts = _objects(gsps, layer)
            assert len(graphics) == len(texts) == len(expected)
            for graphic, text, (index, region) in zip(graphics, texts, expected, strict=True):
                assert graphic.GraphicType == "POLYLINE"
                assert graphic.GraphicAnnotationUnits == "PIXEL"
                assert np.allclose(graphic.GraphicData, _box(region), atol=1e-3)
                (style,) = graphic.LineStyleSequence
                assert style.LineDashingStyle == dashing
                assert text.UnformattedTextValue == region_text(index, region)
                assert f"{region.probability:.2f}" in text.UnformattedTextValue
                assert text.BoundingBoxAnnotationUnits == "PIXEL"
                assert text.TrackingUID == graphic.TrackingUID


def _sr_tracking_uids(sr: Dataset) -> set[str]:
    found: set[str] = set()

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if item.get("ValueType") == "UIDREF":
                found.add(str(item.UID))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def test_boxes_carry_the_tracking_uids_of_the_sr_regions(case: BuiltGsps) -> None:
    in_sr = _sr_tracking_uids(case.study.sr)
    for gsps in case.datasets:
        for annotation in gsps.GraphicAnnotationSequence:
            for graphic in annotation.GraphicObjectSequence:
                assert str(graphic.TrackingUID) in in_sr


def test_regions_go_to_exactly_one_layer() -> None:
    both = FindingRegion(1, 1, 5, 5, 0.9, ("high_sensitivity", "high_specificity"))
    sensitive = FindingRegion(1, 1, 5, 5, 0.5, ("high_sensitivity",))
    assert layer_of(both) is FindingLayer.HIGH_SPECIFICITY
    assert layer_of(sensitive) is FindingLayer.HIGH_SENSITIVITY


def test_a_finding_from_another_study_is_refused(built_studies: dict[str, BuiltStudy]) -> None:
    image = built_studies["dx_monochrome1"].findings.images[0]
    other = built_studies["rg2_uncompressed"].findings
    with pytest.raises(ResultInputError, match="not one of the study's images"):
        build_gsps(
            image, other, series_instance_uid="1.2", sop_instance_uid="1.2.3", instance_number=1
        )


def test_a_colour_image_is_refused(built_studies: dict[str, BuiltStudy]) -> None:
    source = copy.deepcopy(built_studies["dx_monochrome1"].findings.images[0].source)
    findings = make_findings([source], [0.8])
    source.SamplesPerPixel = 3  # after the findings are made: they decode the pixels
    with pytest.raises(ResultInputError, match="single-frame grey"):
        build_gsps(
            findings.images[0],
            findings,
            series_instance_uid="1.2",
            sop_instance_uid="1.2.3",
            instance_number=1,
        )


# What a real presentation-state renderer does with them --------------------------------------
def read_pgm(path: Path) -> NDArray[np.uint16]:
    """A binary PGM (P5, 8 or 16 bit) as written by dcmp2pgm."""
    data = path.read_bytes()
    match = re.match(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s", data)
    assert match is not None, f"{path} is not a binary PGM"
    width, height, maximum = (int(v) for v in match.groups())
    dtype = np.dtype(">u2") if maximum > 255 else np.dtype("u1")
    pixels = np.frombuffer(data[match.end() :], dtype=dtype, count=width * height)
    return pixels.reshape(height, width).astype(np.uint16)


def dcmp2pgm(image: Path, out: Path, pstate: Path | None = None) -> tuple[NDArray[np.uint16], str]:
    """Render ``image`` (with ``pstate`` if given); returns the picture and the verbose log."""
    tool = require_tool("dcmp2pgm")
    args = [tool, "--verbose"]
    if pstate is not None:
        args += ["--pstate", str(pstate)]
    result = subprocess.run(
        [*args, str(image), str(out)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    return read_pgm(out), log


@pytest.fixture(params=RENDERED_CASES)
def rendered(request: pytest.FixtureRequest, built_gsps: dict[str, BuiltGsps]) -> BuiltGsps:
    built = built_gsps[request.param]
    assert built.datasets, f"{request.param} should have an image with regions"
    return built


@pytest.mark.integration
def test_renderer_shows_the_radiograph_as_the_image_alone_does(
    rendered: BuiltGsps, tmp_path: Path
) -> None:
    for gsps_path, source_path in zip(rendered.paths, rendered.source_paths, strict=True):
        plain, _ = dcmp2pgm(source_path, tmp_path / "plain.pgm")
        with_state, _ = dcmp2pgm(source_path, tmp_path / "gsps.pgm", gsps_path)
        assert plain.shape == with_state.shape
        assert plain.std() > 0  # a real picture, not a blank
        # Same VOI, same polarity (MONOCHROME1 is not negated), same area: the same picture.
        assert np.array_equal(plain, with_state)


@pytest.mark.integration
def test_renderer_applies_the_window_and_presentation_lut_we_write(
    rendered: BuiltGsps, tmp_path: Path
) -> None:
    gsps_path, source_path = rendered.paths[0], rendered.source_paths[0]
    plain, _ = dcmp2pgm(source_path, tmp_path / "plain.pgm")

    negated = pydicom.dcmread(gsps_path)
    negated.PresentationLUTShape = (
        "IDENTITY" if negated.PresentationLUTShape == "INVERSE" else "INVERSE"
    )
    negated.save_as(tmp_path / "negated.dcm", enforce_file_format=True)
    picture, _ = dcmp2pgm(source_path, tmp_path / "negated.pgm", tmp_path / "negated.dcm")
    # The picture negated (8-bit PGM; dcmtk inverts before its last rounding step: +-1).
    difference = picture.astype(np.int32) - (255 - plain.astype(np.int32))
    assert np.abs(difference).max() <= 1

    narrow = pydicom.dcmread(gsps_path)
    (voi,) = narrow.SoftcopyVOILUTSequence
    voi.WindowWidth = max(2.0, float(voi.WindowWidth) / 8)
    narrow.save_as(tmp_path / "narrow.dcm", enforce_file_format=True)
    picture, _ = dcmp2pgm(source_path, tmp_path / "narrow.pgm", tmp_path / "narrow.dcm")
    assert not np.array_equal(picture, plain)
    assert picture.std() > plain.std()  # a narrower window stretches the contrast


@pytest.mark.integration
def test_renderer_reads_our_layers_boxes_and_texts(rendered: BuiltGsps, tmp_path: Path) -> None:
    for gsps_path, source_path, gsps in zip(
        rendered.paths, rendered.source_paths, rendered.datasets, strict=True
    ):
        _, log = dcmp2pgm(source_path, tmp_path / "gsps.pgm", gsps_path)
        assert f"Presentation Label: {CONTENT_LABEL}" in log
        for annotation in gsps.GraphicAnnotationSequence:
            layer = str(annotation.GraphicLayer)
            section = log.split(f"[{layer}]", 1)[1].split("Graphic Layer #", 1)[0]
            graphics = annotation.GraphicObjectSequence
            texts = annotation.TextObjectSequence
            assert f"Number of graphic objects: {len(graphics)}" in section
            assert f"Number of text objects: {len(texts)}" in section
            for graphic in graphics:
                x0, y0 = graphic.GraphicData[0], graphic.GraphicData[1]
                assert "type=polyline" in section
                assert f"{x0:g}\\{y0:g}" in section
            for text in texts:
                assert f'"{text.UnformattedTextValue}"' in section

"""Real radiographs, findings built from them, and the DICOM checkers the tests run."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import generate_uid

from reporting import uids
from reporting.findings import (
    AlgorithmInfo,
    FindingRegion,
    ImageFinding,
    OperatingPoint,
    StudyFindings,
)
from reporting.sc import build_gradcam_sc
from reporting.sr import build_sr

DX_MONOCHROME1 = "highdicom/data/test_files/dx_image.dcm"
RG2_UNCOMPRESSED = "robyoung-dicom-test-files/data/WG04/REF/RG2_UNC"
RG2_RLE = "robyoung-dicom-test-files/data/WG04/RLE/RG2_RLE"
RG3_RLE = "robyoung-dicom-test-files/data/WG04/RLE/RG3_RLE"

NON_ASCII_NAME = "Müller^Jürgen"

ALGORITHM = AlgorithmInfo(
    name="fracture-cnn", version="1.4.0", parameters={"input_size": "512", "calibration": "platt"}
)
OPERATING_POINT = OperatingPoint(
    name="high_sensitivity", threshold=0.35, sensitivity=0.95, specificity=0.61
)


@pytest.fixture(scope="session", autouse=True)
def _raise_on_invalid_values() -> Iterator[None]:
    """Every value set or written while building and writing must be valid (pydicom RAISE)."""
    settings = pydicom.config.settings
    before = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom.config.RAISE
    yield
    settings.writing_validation_mode = before


def display_from(dataset: Dataset) -> NDArray[np.float32]:
    """Grey ``[0, 1]`` radiograph, bone bright: modality LUT, VOI LUT, min-max, MONOCHROME1 flip.

    A stand-in for the real pixel pipeline, good enough to look at.
    """
    pixels = apply_voi_lut(apply_modality_lut(dataset.pixel_array, dataset), dataset)
    pixels = pixels.astype(np.float64)
    span = float(pixels.max() - pixels.min()) or 1.0
    grey = (pixels - pixels.min()) / span
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        grey = 1.0 - grey
    return grey.astype(np.float32)


def gaussian_blob(rows: int, columns: int, centre: tuple[float, float]) -> NDArray[np.float32]:
    """A heat map with one Gaussian hot spot at ``centre`` (fractions of rows and columns)."""
    y, x = np.mgrid[0:rows, 0:columns]
    cy, cx = centre[0] * rows, centre[1] * columns
    sigma = 0.12 * min(rows, columns)
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


@dataclass
class BuiltStudy:
    """A study's findings, the SCs and SR built from them, and where they were written."""

    name: str
    findings: StudyFindings
    scs: list[Dataset]
    sr: Dataset
    sc_paths: list[Path]
    sr_path: Path


def read_source(shared_dir: Path, relative: str) -> Dataset:
    return pydicom.dcmread(shared_dir / "dicom" / relative)


def with_patient_name(source: Dataset, name: str, charset: str) -> Dataset:
    """An in-memory copy of ``source`` for a patient with a non-ASCII name."""
    copied = copy.deepcopy(source)
    copied.SpecificCharacterSet = charset
    copied.PatientName = name
    return copied


def rehomed(source: Dataset, study: Dataset) -> Dataset:
    """An in-memory copy of ``source`` moved into ``study``'s patient and study, as a new image."""
    copied = copy.deepcopy(source)
    for keyword in (
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
    ):
        if keyword in study:
            copied[keyword] = copy.deepcopy(study[keyword])
    copied.SeriesInstanceUID = generate_uid(entropy_srcs=[str(source.SOPInstanceUID), "series"])
    copied.SOPInstanceUID = generate_uid(entropy_srcs=[str(source.SOPInstanceUID), "instance"])
    return copied


def regions_around(
    source: Dataset, centre: tuple[float, float], probability: float
) -> tuple[FindingRegion, ...]:
    """A positive image's suspected fractures: a box on the hot spot and a weaker one."""
    rows, columns = int(source.Rows), int(source.Columns)
    cy, cx = centre[0] * rows, centre[1] * columns
    half = 0.08 * min(rows, columns)
    top = FindingRegion(
        x0=cx - half,
        y0=cy - half,
        x1=cx + half,
        y1=cy + half,
        probability=probability,
        operating_points=("high_sensitivity", "high_specificity"),
    )
    weaker = FindingRegion(
        x0=0.05 * columns,
        y0=0.05 * rows,
        x1=0.15 * columns,
        y1=0.12 * rows,
        probability=probability * 0.6,
        operating_points=("high_sensitivity",),
    )
    return (top, weaker)


def make_findings(sources: list[Dataset], probabilities: list[float]) -> StudyFindings:
    centres = [(0.45, 0.55), (0.3, 0.35), (0.6, 0.7)]
    images = [
        ImageFinding(
            source=source,
            probability=probability,
            positive=probability >= OPERATING_POINT.threshold,
            heatmap=gaussian_blob(source.Rows, source.Columns, centres[index % len(centres)]),
            display=display_from(source),
            regions=(
                regions_around(source, centres[index % len(centres)], probability)
                if probability >= OPERATING_POINT.threshold
                else ()
            ),
        )
        for index, (source, probability) in enumerate(zip(sources, probabilities, strict=True))
    ]
    study_probability = max(probabilities)
    return StudyFindings(
        images=images,
        study_probability=study_probability,
        study_positive=study_probability >= OPERATING_POINT.threshold,
        operating_point=OPERATING_POINT,
        algorithm=ALGORITHM,
    )


def build_study(name: str, findings: StudyFindings, directory: Path) -> BuiltStudy:
    """Build, and write to ``directory``, the SCs and SR of a study as the pipeline would."""
    study_uid = findings.study_instance_uid
    scs = [
        build_gradcam_sc(
            image,
            findings,
            series_instance_uid=uids.sc_series_uid(study_uid, ALGORITHM.name, ALGORITHM.version),
            sop_instance_uid=uids.sc_instance_uid(
                study_uid, ALGORITHM.name, ALGORITHM.version, str(image.source.SOPInstanceUID)
            ),
            instance_number=number,
        )
        for number, image in enumerate(findings.images, start=1)
    ]
    sr = build_sr(
        findings,
        sc_datasets=scs,
        series_instance_uid=uids.sr_series_uid(study_uid, ALGORITHM.name, ALGORITHM.version),
        sop_instance_uid=uids.sr_instance_uid(
            study_uid,
            ALGORITHM.name,
            ALGORITHM.version,
            [str(image.source.SOPInstanceUID) for image in findings.images],
        ),
    )
    directory.mkdir(parents=True, exist_ok=True)
    sc_paths = []
    for number, sc in enumerate(scs, start=1):
        path = directory / f"{name}-sc{number}.dcm"
        sc.save_as(path, enforce_file_format=True)
        sc_paths.append(path)
    sr_path = directory / f"{name}-sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    return BuiltStudy(name, findings, scs, sr, sc_paths, sr_path)


STUDY_CASES = ("dx_monochrome1", "rg2_uncompressed", "rle_two_images", "utf8_name", "latin1_name")


@pytest.fixture(scope="session")
def built_studies(
    shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, BuiltStudy]:
    """Every test study, built once for the session."""
    directory = tmp_path_factory.mktemp("results")
    dx = read_source(shared_dir, DX_MONOCHROME1)
    rg3 = read_source(shared_dir, RG3_RLE)
    cases = {
        "dx_monochrome1": ([dx], [0.83]),
        "rg2_uncompressed": ([read_source(shared_dir, RG2_UNCOMPRESSED)], [0.12]),
        "rle_two_images": ([rg3, rehomed(read_source(shared_dir, RG2_RLE), rg3)], [0.91, 0.07]),
        "utf8_name": ([with_patient_name(dx, NON_ASCII_NAME, "ISO_IR 192")], [0.4]),
        "latin1_name": ([with_patient_name(dx, NON_ASCII_NAME, "ISO_IR 100")], [0.2]),
    }
    return {
        name: build_study(name, make_findings(sources, probabilities), directory)
        for name, (sources, probabilities) in cases.items()
    }


def assert_round_trip(dataset: Dataset, path: Path) -> Dataset:
    """Read ``path`` back: same attributes as ``dataset`` and the same bytes when rewritten."""
    read = pydicom.dcmread(path)

    def no_bulk(element: pydicom.DataElement) -> str:
        return f"bulk:{len(element.value)}"

    def as_json(ds: Dataset) -> str:
        # Dates and times built in memory are DA/TM objects; compare their DICOM strings.
        return json.dumps(ds.to_json_dict(1024, no_bulk), default=str, sort_keys=True)

    assert as_json(read) == as_json(dataset)
    assert as_json(read.file_meta) == as_json(dataset.file_meta)
    assert read.preamble == b"\x00" * 128
    rewritten = io.BytesIO()
    read.save_as(rewritten, enforce_file_format=True)
    assert rewritten.getvalue() == path.read_bytes()
    return read


def require_tool(name: str) -> str:
    """Path of an external checker; missing is a failure in CI and a skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


@dataclass(frozen=True)
class Verdict:
    """What dciodvfy said about a file."""

    errors: list[str]
    warnings: list[str]


def dciodvfy(path: Path) -> Verdict:
    """Run dciodvfy on ``path`` and collect its ``Error`` and ``Warning`` lines."""
    tool = require_tool("dciodvfy")
    result = subprocess.run(
        [tool, str(path)], capture_output=True, text=True, errors="replace", check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return Verdict(
        errors=[line for line in lines if line.startswith("Error")],
        warnings=[line for line in lines if line.startswith("Warning")],
    )

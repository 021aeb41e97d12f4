"""The input contract validates eagerly, naming the bad value."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom import Dataset

from reporting.findings import (
    AlgorithmInfo,
    ImageFinding,
    OperatingPoint,
    ResultInputError,
    StudyFindings,
)


def source(study: str = "1.2.3", sop: str = "1.2.3.4", rows: int = 4, columns: int = 5) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = study
    ds.SOPInstanceUID = sop
    ds.Rows = rows
    ds.Columns = columns
    return ds


def plane(rows: int = 4, columns: int = 5, value: float = 0.5) -> np.ndarray:
    return np.full((rows, columns), value, dtype=np.float32)


def finding(**changes: object) -> ImageFinding:
    values: dict[str, object] = {
        "source": source(),
        "probability": 0.5,
        "positive": True,
        "heatmap": plane(),
        "display": plane(),
    }
    values.update(changes)
    return ImageFinding(**values)  # type: ignore[arg-type]


ALGORITHM = AlgorithmInfo("cnn", "1.0", {"input_size": "512"})
POINT = OperatingPoint("high_specificity", 0.7, None, 0.9)


def test_a_valid_study_is_accepted() -> None:
    study = StudyFindings([finding()], 0.5, True, POINT, ALGORITHM)
    assert study.study_instance_uid == "1.2.3"
    assert ALGORITHM.manufacturer == "fracture-gateway"


@pytest.mark.parametrize("probability", [-0.1, 1.01, math.nan, math.inf])
def test_probabilities_outside_zero_one_are_refused(probability: float) -> None:
    with pytest.raises(ResultInputError, match="image probability"):
        finding(probability=probability)
    with pytest.raises(ResultInputError, match="threshold"):
        OperatingPoint("p", probability, None, None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"heatmap": plane(5, 4)}, "heatmap has shape"),
        ({"display": plane().astype(np.float64)}, "display must be a float32"),
        ({"heatmap": plane(value=1.5)}, "heatmap values"),
        ({"display": plane(value=math.nan)}, "display values"),
    ],
)
def test_planes_must_match_the_source_grid_and_range(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ResultInputError, match=message):
        finding(**changes)


def test_source_without_size_is_refused() -> None:
    bare = Dataset()
    with pytest.raises(ResultInputError, match="Rows/Columns"):
        finding(source=bare)


def test_images_of_two_studies_are_refused() -> None:
    other = finding(source=source(study="1.2.9", sop="1.2.9.1"))
    with pytest.raises(ResultInputError, match="one Study Instance UID"):
        StudyFindings([finding(), other], 0.5, True, POINT, ALGORITHM)


def test_duplicate_images_are_refused() -> None:
    with pytest.raises(ResultInputError, match="its own SOP Instance UID"):
        StudyFindings([finding(), finding()], 0.5, True, POINT, ALGORITHM)


def test_empty_study_is_refused() -> None:
    with pytest.raises(ResultInputError, match="at least one image"):
        StudyFindings([], 0.5, True, POINT, ALGORITHM)


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "", "version": "1"},
        {"name": "Modèle", "version": "1"},
        {"name": "cnn", "version": "1\\2"},
        {"name": "x" * 65, "version": "1"},
    ],
)
def test_algorithm_text_must_be_plain_ascii(algorithm: dict[str, str]) -> None:
    with pytest.raises(ResultInputError, match="algorithm"):
        AlgorithmInfo(**algorithm)

"""What the pipeline hands to reporting: per-image and per-study results of one model run.

These frozen dataclasses are the input contract of :mod:`reporting.sc` and :mod:`reporting.sr`.
They validate eagerly, so a bad value fails where it is made, with the value in the message
(never patient data: only shapes, probabilities and names of operating points and models).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset


class ResultInputError(ValueError):
    """Input that reporting cannot turn into a valid result object."""


def _check_text(name: str, value: str, limit: int = 64) -> None:
    """Raise unless ``value`` is non-empty printable ASCII without ``\\``, at most ``limit`` long.

    These strings go into DICOM LO/UT values of objects whose character set is the source's, and
    into burned-in text, so they are kept to the default repertoire (PS3.5 6.1.2).
    """
    if not value.strip():
        raise ResultInputError(f"{name} must not be empty")
    if len(value) > limit or any(not " " <= ch <= "~" or ch == "\\" for ch in value):
        raise ResultInputError(
            f"{name} must be printable ASCII without backslash, at most {limit} characters: "
            f"{value!r}"
        )


def _check_probability(name: str, value: float) -> None:
    """Raise :class:`ResultInputError` unless ``value`` is a finite number in ``[0, 1]``."""
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ResultInputError(f"{name} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that produced the findings (DICOM TID 4019 Algorithm Identification)."""

    name: str
    version: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    manufacturer: str = "fracture-gateway"

    def __post_init__(self) -> None:
        _check_text("algorithm name", self.name)
        _check_text("algorithm version", self.version)
        _check_text("algorithm manufacturer", self.manufacturer)
        for key, value in self.parameters.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ResultInputError(f"algorithm parameter {key!r} must map str to str")
            _check_text("algorithm parameter", f"{key}={value}", limit=1024)


@dataclass(frozen=True)
class OperatingPoint:
    """A named decision threshold on the calibrated probability, with its validation metrics."""

    name: str
    threshold: float
    sensitivity: float | None = None
    specificity: float | None = None

    def __post_init__(self) -> None:
        _check_text("operating point name", self.name)
        _check_probability(f"threshold of operating point {self.name!r}", self.threshold)
        if self.sensitivity is not None:
            _check_probability(f"sensitivity of operating point {self.name!r}", self.sensitivity)
        if self.specificity is not None:
            _check_probability(f"specificity of operating point {self.name!r}", self.specificity)


@dataclass(frozen=True)
class FindingRegion:
    """A suspected fracture on the source image: a box in pixel coordinates.

    ``x`` runs along columns and ``y`` along rows, with ``(0, 0)`` the top left corner of the
    top left pixel (the SCOORD convention, PS3.3 C.18.6.1.2). ``operating_points`` names the
    operating points at which the region is reported (it is positive at them).
    """

    x0: float
    y0: float
    x1: float
    y1: float
    probability: float
    operating_points: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_probability("region probability", self.probability)
        values = (self.x0, self.y0, self.x1, self.y1)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ResultInputError(f"region corners must be finite numbers, got {values!r}")
        if not (0.0 <= self.x0 < self.x1 and 0.0 <= self.y0 < self.y1):
            raise ResultInputError(f"region must satisfy 0 <= x0 < x1 and 0 <= y0 < y1: {values}")
        if not self.operating_points:
            raise ResultInputError("a region must name the operating points it is reported at")
        for name in self.operating_points:
            _check_text("region operating point", name)


@dataclass(frozen=True, eq=False)
class ImageFinding:
    """The model's result for one received radiograph.

    Attributes
    ----------
    source:
        The received image (its attributes are copied into the result objects; its pixels are
        not read here).
    probability:
        Calibrated probability that the image shows a fracture.
    positive:
        Whether ``probability`` reaches the operating point's threshold.
    heatmap:
        Grad-CAM heat map, float32 in ``[0, 1]``, on the source's pixel grid (Rows x Columns).
    display:
        The radiograph as grey float32 in ``[0, 1]`` on the same grid, bone bright, windowed.
    regions:
        Suspected fractures (boxes on the source's pixel grid), strongest first; empty when
        the model has no localisation output or the image is negative.
    """

    source: Dataset
    probability: float
    positive: bool
    heatmap: NDArray[np.float32]
    display: NDArray[np.float32]
    regions: tuple[FindingRegion, ...] = ()

    def __post_init__(self) -> None:
        _check_probability("image probability", self.probability)
        rows = self.source.get("Rows")
        columns = self.source.get("Columns")
        if rows is None or columns is None:
            raise ResultInputError("source image has no Rows/Columns (0028,0010/0011)")
        expected = (int(rows), int(columns))
        for region in self.regions:
            if region.x1 > expected[1] or region.y1 > expected[0]:
                raise ResultInputError(
                    f"region ({region.x0}, {region.y0}, {region.x1}, {region.y1}) lies outside "
                    f"the image (Columns x Rows {expected[1]} x {expected[0]})"
                )
        for name, array in (("heatmap", self.heatmap), ("display", self.display)):
            if not isinstance(array, np.ndarray) or array.dtype != np.float32:
                raise ResultInputError(f"{name} must be a float32 ndarray")
            if array.shape != expected:
                raise ResultInputError(
                    f"{name} has shape {array.shape}, expected Rows x Columns {expected}"
                )
            if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
                raise ResultInputError(f"{name} values must be finite and within [0, 1]")


@dataclass(frozen=True, eq=False)
class StudyFindings:
    """The model's results for every analysed image of one study, and the study-level call."""

    images: list[ImageFinding]
    study_probability: float
    study_positive: bool
    operating_point: OperatingPoint
    algorithm: AlgorithmInfo

    def __post_init__(self) -> None:
        if not self.images:
            raise ResultInputError("study findings need at least one image finding")
        _check_probability("study probability", self.study_probability)
        study_uids = {str(image.source.get("StudyInstanceUID", "")) for image in self.images}
        if len(study_uids) != 1 or "" in study_uids:
            raise ResultInputError(
                f"all images must share one Study Instance UID, found {len(study_uids)} values"
            )
        sop_uids = [str(image.source.get("SOPInstanceUID", "")) for image in self.images]
        if "" in sop_uids or len(set(sop_uids)) != len(sop_uids):
            raise ResultInputError("every image needs its own SOP Instance UID")

    @property
    def study_instance_uid(self) -> str:
        """Study Instance UID shared by all analysed images."""
        return str(self.images[0].source.StudyInstanceUID)

"""Model package = a ``.keras`` file plus its card ``model.json``; loading validates both.

The card says everything the service needs to use the model correctly: the input size and
preprocessing it was trained with, the class names and which one is positive, the Grad-CAM
layer, the Platt calibration of its score and the operating points (thresholds on the calibrated
probability) with the sensitivity and specificity they reached on validation data.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:  # the card is plain data: importing it must not load Keras (6 s)
    import keras

#: File name of the card inside a package folder.
CARD_FILE = "model.json"
#: Version of the card's schema; bump on incompatible changes.
SCHEMA_VERSION = 1


class ModelPackageError(ValueError):
    """A model package whose card or model file is missing, inconsistent or invalid."""


class OperatingPointName(enum.StrEnum):
    """The two operating points every package carries."""

    HIGH_SENSITIVITY = "high_sensitivity"
    HIGH_SPECIFICITY = "high_specificity"


class OutputKind(enum.StrEnum):
    """How the model's output encodes the positive class's score."""

    SIGMOID = "sigmoid"  # one output: the positive class's probability
    SOFTMAX = "softmax"  # one output per class


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """How a grey image becomes the model input (see ``inference.preprocess.prepare``)."""

    size: int
    crop: bool
    grey_min: float = 0.0
    grey_max: float = 1.0


@dataclass(frozen=True, slots=True)
class PlattCalibration:
    """Platt scaling on the score's logit: ``p = sigmoid(slope * logit(s) + intercept)``."""

    slope: float = 1.0
    intercept: float = 0.0
    #: Scores are clipped to ``[eps, 1 - eps]`` before the logit.
    eps: float = 1e-6

    def apply(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Calibrated probabilities for raw scores in ``[0, 1]``."""
        s = np.clip(np.asarray(scores, dtype=np.float64), self.eps, 1.0 - self.eps)
        z = self.slope * np.log(s / (1.0 - s)) + self.intercept
        out: NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))  # a sigmoid that never overflows
        return out


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A threshold on the calibrated probability and what it reached on validation data."""

    threshold: float
    sensitivity: float
    specificity: float
    target: float | None = None


@dataclass(frozen=True, slots=True)
class ModelCard:
    """Everything ``model.json`` says about a model."""

    name: str
    version: str
    model_file: str
    sha256: str
    input_size: int
    input_channels: int
    class_names: tuple[str, ...]
    positive_class: str
    output: OutputKind
    preprocessing: Preprocessing
    gradcam_layer: str
    calibration: PlattCalibration
    operating_points: dict[OperatingPointName, OperatingPoint]
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    framework: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    #: Name of the model's fracture-localisation output (a sigmoid map), when it has one; the
    #: service then shows that map and derives regions from it instead of Grad-CAM.
    localisation_layer: str | None = None
    #: Body Part Examined terms the model covers (``inference.scope``); empty: not stated.
    body_parts: tuple[str, ...] = ()

    @property
    def positive_index(self) -> int:
        return self.class_names.index(self.positive_class)

    def operating_point(self, name: OperatingPointName) -> OperatingPoint:
        return self.operating_points[name]

    def to_json(self) -> dict[str, Any]:
        """The card as JSON-able data (the inverse of :func:`card_from_json`)."""
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        data["body_parts"] = list(self.body_parts)
        data["output"] = self.output.value
        data["operating_points"] = {
            name.value: asdict(point) for name, point in self.operating_points.items()
        }
        return data


@dataclass(frozen=True, slots=True)
class ModelPackage:
    """A validated card and its loaded Keras model."""

    card: ModelCard
    model: keras.Model
    directory: Path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ModelPackageError(f"{where}: missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ModelPackageError(f"{where}: field {key!r} must be a number, got {value!r}")
    if not isinstance(value, kind):
        raise ModelPackageError(f"{where}: field {key!r} has the wrong type: {value!r}")
    return value


def _probability(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ModelPackageError(f"{where} must be a number in [0, 1], got {value!r}")
    return float(value)


def card_from_json(data: Any) -> ModelCard:
    """Parse and check a card; raises :class:`ModelPackageError` naming the bad value."""
    if not isinstance(data, dict):
        raise ModelPackageError(f"model card must be a JSON object, got {type(data).__name__}")
    where = "model card"
    version = _require(data, "schema_version", int, where)
    if version != SCHEMA_VERSION:
        raise ModelPackageError(f"unsupported model card schema_version {version!r}")
    classes = _require(data, "class_names", list, where)
    if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise ModelPackageError(f"class_names must be two or more names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ModelPackageError(f"class_names must be distinct, got {classes!r}")
    positive = _require(data, "positive_class", str, where)
    if positive not in classes:
        raise ModelPackageError(f"positive_class {positive!r} is not one of {classes!r}")
    output_name = _require(data, "output", str, where)
    try:
        output = OutputKind(output_name)
    except ValueError:
        raise ModelPackageError(f"output must be sigmoid or softmax, got {output_name!r}") from None
    if output is OutputKind.SIGMOID and len(classes) != 2:
        raise ModelPackageError(f"a sigmoid output needs two classes, got {classes!r}")
    size = _require(data, "input_size", int, where)
    if size < 8:
        raise ModelPackageError(f"input_size must be at least 8, got {size!r}")
    channels = _require(data, "input_channels", int, where)
    if channels != 1:
        raise ModelPackageError(f"input_channels must be 1 (grey), got {channels!r}")
    pre = _require(data, "preprocessing", dict, where)
    preprocessing = Preprocessing(
        size=_require(pre, "size", int, "preprocessing"),
        crop=_require(pre, "crop", bool, "preprocessing"),
        grey_min=float(_require(pre, "grey_min", (int, float), "preprocessing")),
        grey_max=float(_require(pre, "grey_max", (int, float), "preprocessing")),
    )
    if preprocessing.size != size:
        raise ModelPackageError(
            f"preprocessing size {preprocessing.size!r} differs from input_size {size!r}"
        )
    if (preprocessing.grey_min, preprocessing.grey_max) != (0.0, 1.0):
        raise ModelPackageError(
            f"grey range must be [0, 1], got [{preprocessing.grey_min}, {preprocessing.grey_max}]"
        )
    cal = _require(data, "calibration", dict, where)
    calibration = PlattCalibration(
        slope=float(_require(cal, "slope", (int, float), "calibration")),
        intercept=float(_require(cal, "intercept", (int, float), "calibration")),
        eps=float(cal.get("eps", 1e-6)),
    )
    if not (math.isfinite(calibration.slope) and math.isfinite(calibration.intercept)):
        raise ModelPackageError(f"calibration parameters must be finite, got {cal!r}")
    points_data = _require(data, "operating_points", dict, where)
    points: dict[OperatingPointName, OperatingPoint] = {}
    for name in OperatingPointName:
        point = _require(points_data, name.value, dict, "operating_points")
        here = f"operating point {name.value}"
        target = point.get("target")
        points[name] = OperatingPoint(
            threshold=_probability(point.get("threshold"), f"{here} threshold"),
            sensitivity=_probability(point.get("sensitivity"), f"{here} sensitivity"),
            specificity=_probability(point.get("specificity"), f"{here} specificity"),
            target=None if target is None else _probability(target, f"{here} target"),
        )
    sha = _require(data, "sha256", str, where)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelPackageError(f"sha256 must be 64 lower-case hex digits, got {sha!r}")
    model_file = _require(data, "model_file", str, where)
    if Path(model_file).name != model_file or not model_file.endswith(".keras"):
        raise ModelPackageError(f"model_file must be a .keras file name, got {model_file!r}")
    return ModelCard(
        name=_require(data, "name", str, where),
        version=_require(data, "version", str, where),
        model_file=model_file,
        sha256=sha,
        input_size=size,
        input_channels=channels,
        class_names=tuple(classes),
        positive_class=positive,
        output=output,
        preprocessing=preprocessing,
        gradcam_layer=_require(data, "gradcam_layer", str, where),
        calibration=calibration,
        operating_points=points,
        training_data=dict(data.get("training_data", {})),
        metrics=dict(data.get("metrics", {})),
        created=str(data.get("created", "")),
        framework={str(k): str(v) for k, v in dict(data.get("framework", {})).items()},
        schema_version=version,
        localisation_layer=_optional_name(data.get("localisation_layer"), "localisation_layer"),
        body_parts=_body_parts(data.get("body_parts", [])),
    )


def _body_parts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ModelPackageError(f"body_parts must be a list of Body Part Examined terms: {value!r}")
    return tuple(v.upper() for v in value)


def _optional_name(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ModelPackageError(f"{where} must be a layer name or null, got {value!r}")
    return value


def check_model(card: ModelCard, model: keras.Model) -> None:
    """The model's input and output shapes and its Grad-CAM layer agree with the card."""
    expected_input = (None, card.input_size, card.input_size, card.input_channels)
    if tuple(model.input_shape) != expected_input:
        raise ModelPackageError(
            f"model input shape {tuple(model.input_shape)} differs from the card's {expected_input}"
        )
    outputs = 1 if card.output is OutputKind.SIGMOID else len(card.class_names)
    model_outputs = list(model.outputs)
    prediction_shape = tuple(model_outputs[0].shape)
    if prediction_shape != (None, outputs):
        raise ModelPackageError(
            f"model output shape {prediction_shape} differs from the card's (None, {outputs})"
        )
    expected_outputs = 1 if card.localisation_layer is None else 2
    if len(model_outputs) != expected_outputs:
        raise ModelPackageError(
            f"the model has {len(model_outputs)} outputs, the card describes {expected_outputs}"
        )
    names = {layer.name for layer in model.layers}
    if card.gradcam_layer not in names:
        raise ModelPackageError(f"Grad-CAM layer {card.gradcam_layer!r} is not in the model")
    if card.localisation_layer is not None:
        shape = tuple(model_outputs[1].shape)
        if len(shape) != 4 or shape[3] != 1 or shape[1] is None or shape[1] != shape[2]:
            raise ModelPackageError(f"localisation output must be (None, h, h, 1), got {shape}")
        if card.localisation_layer not in names:
            raise ModelPackageError(
                f"localisation layer {card.localisation_layer!r} is not in the model"
            )


def _card_path(path: Path) -> Path:
    return path / CARD_FILE if path.is_dir() else path


def read_card(path: Path) -> ModelCard:
    """Read and check a card (``model.json`` or the folder holding it); the model is not loaded."""
    card_path = _card_path(path)
    if not card_path.is_file():
        raise ModelPackageError(f"model card {str(card_path)!r} does not exist")
    try:
        data = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelPackageError(f"model card {str(card_path)!r} is not valid JSON: {exc}") from exc
    return card_from_json(data)


def load_package(path: Path) -> ModelPackage:
    """Load a package folder (or its ``model.json``), verifying checksum, shapes and layers."""
    card_path = _card_path(path)
    card = read_card(card_path)
    model_path = card_path.parent / card.model_file
    if not model_path.is_file():
        raise ModelPackageError(f"model file {str(model_path)!r} does not exist")
    actual = file_sha256(model_path)
    if actual != card.sha256:
        raise ModelPackageError(
            f"sha256 of {card.model_file!r} is {actual}, the card says {card.sha256}"
        )
    import keras

    try:
        model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    except (ValueError, OSError, TypeError) as exc:
        raise ModelPackageError(f"cannot load {card.model_file!r}: {exc}") from exc
    check_model(card, model)
    return ModelPackage(card=card, model=model, directory=card_path.parent)


def write_package(directory: Path, model: keras.Model, card: ModelCard) -> ModelCard:
    """Save ``model`` as ``<card.name>.keras`` and the card (with the file's sha256) beside it.

    The model is saved without optimizer state; the card's ``model_file`` and ``sha256`` are
    filled in here. Returns the card as written.
    """
    check_model(card, model)
    directory.mkdir(parents=True, exist_ok=True)
    model_file = f"{card.name}.keras"
    model_path = directory / model_file
    tmp = directory / f".{model_file}.tmp.keras"
    model.save(tmp, include_optimizer=False)
    tmp.replace(model_path)
    final = replace(card, model_file=model_file, sha256=file_sha256(model_path))
    card_from_json(json.loads(json.dumps(final.to_json())))  # the written card must parse back
    (directory / CARD_FILE).write_text(json.dumps(final.to_json(), indent=2) + "\n")
    return final

"""Model package writing, loading and card validation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from inference.model_package import (
    CARD_FILE,
    ModelPackageError,
    OperatingPointName,
    card_from_json,
    file_sha256,
    load_package,
    read_card,
)
from tests.training.packages import make_package, tiny_model


def _edit_card(folder: Path, **changes: Any) -> None:
    path = folder / CARD_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_written_package_loads_and_round_trips(tmp_path: Path) -> None:
    card = make_package(tmp_path)
    assert card.sha256 == file_sha256(tmp_path / card.model_file)
    package = load_package(tmp_path)
    assert package.card == card
    assert package.model.input_shape == (None, 32, 32, 1)
    assert load_package(tmp_path / CARD_FILE).card == card
    assert card_from_json(card.to_json()) == card
    point = card.operating_point(OperatingPointName.HIGH_SENSITIVITY)
    assert point.threshold == 0.3


def test_wrong_checksum_is_refused(tmp_path: Path) -> None:
    make_package(tmp_path)
    _edit_card(tmp_path, sha256="ab" * 32)
    with pytest.raises(ModelPackageError, match="abababab"):
        load_package(tmp_path)


def test_changed_model_file_is_refused(tmp_path: Path) -> None:
    card = make_package(tmp_path)
    with (tmp_path / card.model_file).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelPackageError, match="sha256"):
        load_package(tmp_path)


def test_missing_gradcam_layer_is_refused(tmp_path: Path) -> None:
    make_package(tmp_path)
    _edit_card(tmp_path, gradcam_layer="no_such_layer")
    with pytest.raises(ModelPackageError, match="no_such_layer"):
        load_package(tmp_path)


def test_input_shape_mismatch_is_refused(tmp_path: Path) -> None:
    make_package(tmp_path, size=32)
    data = json.loads((tmp_path / CARD_FILE).read_text())
    data["input_size"] = 48
    data["preprocessing"]["size"] = 48
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match=re.escape("(None, 48, 48, 1)")):
        load_package(tmp_path)


def test_output_shape_mismatch_is_refused(tmp_path: Path) -> None:
    make_package(tmp_path, class_names=("Fractured", "Normal", "Hardware"))
    data = json.loads((tmp_path / CARD_FILE).read_text())
    data["class_names"] = ["Fractured", "Normal", "Hardware", "Other"]
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelPackageError, match="output shape"):
        load_package(tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input_channels", 3, "input_channels must be 1"),
        ("positive_class", "Broken", "'Broken'"),
        ("output", "relu", "'relu'"),
        ("schema_version", 99, "99"),
        ("sha256", "xyz", "'xyz'"),
        ("model_file", "../evil.keras", "evil"),
        ("class_names", ["Fractured"], "two or more"),
    ],
)
def test_bad_card_values_are_named(tmp_path: Path, field: str, value: object, message: str) -> None:
    card = make_package(tmp_path)
    data = card.to_json()
    data[field] = value
    with pytest.raises(ModelPackageError, match=message):
        card_from_json(data)


def test_bad_threshold_and_missing_fields(tmp_path: Path) -> None:
    card = make_package(tmp_path)
    data = card.to_json()
    data["operating_points"]["high_specificity"]["threshold"] = 1.5
    with pytest.raises(ModelPackageError, match=r"1\.5"):
        card_from_json(data)
    data = card.to_json()
    del data["gradcam_layer"]
    with pytest.raises(ModelPackageError, match="gradcam_layer"):
        card_from_json(data)
    data = card.to_json()
    data["preprocessing"]["size"] = 64
    with pytest.raises(ModelPackageError, match="64"):
        card_from_json(data)


def test_missing_or_broken_card_file(tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match="does not exist"):
        read_card(tmp_path)
    (tmp_path / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        read_card(tmp_path)


def test_writing_refuses_a_model_that_disagrees_with_the_card(tmp_path: Path) -> None:
    from inference.model_package import write_package
    from tests.training.packages import tiny_card

    with pytest.raises(ModelPackageError, match="input shape"):
        write_package(tmp_path, tiny_model(size=48), tiny_card(size=32))

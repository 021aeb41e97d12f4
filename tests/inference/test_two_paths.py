"""One picture, two paths: a training picture and the same picture wrapped as DICOM must give the
same model input, whichever way the DICOM stores it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from config.settings import Settings
from inference.model_package import load_package
from inference.picture import read_picture
from inference.pixels import to_model_input
from inference.predictor import Predictor
from inference.preprocess import prepare
from tests.inference.dicom_factory import PictureVariant, wrap_picture_as_dicom

SIZE = 256
PICTURES_PER_CLASS = 10
#: Measured on these pictures (docs/PIXELS.md): all three variants give bit-identical model
#: inputs (difference 0); the tolerance only allows for float32 rounding on other platforms.
TOLERANCE = 1e-6
#: Wrapping as 8-bit rounds the picture's BT.601 grey, which moves the model input by at most
#: half a grey level. FracAtlas colour JPEGs hold R = G = B, so the measured cost here is 0.
ROUNDING_TOLERANCE = 0.5 / 255 + 1e-6


def pictures(shared_dir: Path) -> list[Path]:
    root = shared_dir / "data" / "fracatlas" / "images"
    chosen: list[Path] = []
    for folder in ("Fractured", "Non_fractured"):
        names = sorted((root / folder).glob("*.jpg"))
        step = max(1, len(names) // PICTURES_PER_CLASS)
        chosen.extend(names[::step][:PICTURES_PER_CLASS])
    return chosen


@pytest.fixture(scope="module")
def greys(shared_dir: Path) -> list[tuple[str, np.ndarray]]:
    out = []
    for path in pictures(shared_dir):
        grey, _truncated = read_picture(path)
        out.append((path.name, grey))
    assert len(out) == 2 * PICTURES_PER_CLASS
    return out


@pytest.mark.parametrize("variant", list(PictureVariant))
def test_dicom_path_equals_picture_path(
    greys: list[tuple[str, np.ndarray]], variant: PictureVariant
) -> None:
    worst = 0.0
    for name, grey in greys:
        grey8 = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
        expected = prepare(grey8.astype(np.float32) / np.float32(255.0), SIZE)
        got = to_model_input(wrap_picture_as_dicom(grey8, variant), SIZE)
        assert got.transform == expected.transform, name
        diff = float(np.abs(got.tensor - expected.tensor).max())
        assert diff <= TOLERANCE, name
        worst = max(worst, diff)
    print(f"variant {variant.value}: max abs difference {worst:.2e}")


def test_rounding_to_8_bits_costs_at_most_half_a_grey_level(
    greys: list[tuple[str, np.ndarray]],
) -> None:
    for name, grey in greys:
        grey8 = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
        unrounded = prepare(grey, SIZE, crop=False)
        got = to_model_input(wrap_picture_as_dicom(grey8, "a"), SIZE, crop=False)
        assert float(np.abs(got.tensor - unrounded.tensor).max()) <= ROUNDING_TOLERANCE, name


def test_wrapped_variants_store_what_they_say(greys: list[tuple[str, np.ndarray]]) -> None:
    grey8 = np.clip(np.rint(greys[0][1] * 255.0), 0, 255).astype(np.uint8)
    a, b, c = (wrap_picture_as_dicom(grey8, v) for v in PictureVariant)
    assert (a.PhotometricInterpretation, a.BitsStored) == ("MONOCHROME2", 8)
    np.testing.assert_array_equal(a.pixel_array, grey8)
    assert (b.PhotometricInterpretation, b.BitsStored) == ("MONOCHROME2", 12)
    np.testing.assert_array_equal(b.pixel_array, grey8.astype(np.uint16) * 16)
    assert (c.PhotometricInterpretation, c.BitsStored) == ("MONOCHROME1", 8)
    np.testing.assert_array_equal(c.pixel_array, 255 - grey8)


@pytest.fixture(scope="module")
def bundled_predictor() -> Predictor:
    """The model the service runs by default (the bundled package)."""
    return Predictor(load_package(Settings().inference.model_path))


@pytest.mark.parametrize("variant", list(PictureVariant))
def test_both_paths_give_the_same_probability_with_the_bundled_model(
    greys: list[tuple[str, np.ndarray]], variant: PictureVariant, bundled_predictor: Predictor
) -> None:
    """The probabilities the service computes from DICOM match the training path's (< 0.02)."""
    card = bundled_predictor.card
    size, crop = card.input_size, card.preprocessing.crop
    picture_inputs, dicom_inputs = [], []
    for _name, grey in greys:
        grey8 = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
        picture_inputs.append(prepare(grey, size, crop=crop))
        dicom_inputs.append(to_model_input(wrap_picture_as_dicom(grey8, variant), size, crop=crop))
    from_pictures = bundled_predictor.predict(picture_inputs)
    from_dicom = bundled_predictor.predict(dicom_inputs)
    differences = [
        abs(a.probability - b.probability) for a, b in zip(from_pictures, from_dicom, strict=True)
    ]
    assert max(differences) < 0.02, differences

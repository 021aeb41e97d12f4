"""Data set layouts, deterministic splits and picture problems."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.cache import build_cache
from training.datasets import (
    DatasetError,
    Layout,
    Split,
    load_dataset,
    positive_class_index,
    split_examples,
)


def _png(path: Path, value: int = 128, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full(size, value, dtype=np.uint8)
    image[5:20, 5:15] = 255 - value
    assert cv2.imwrite(str(path), image)
    return path


def test_three_class_folders(tmp_path: Path) -> None:
    for name, n in (("Fractured", 3), ("Non_fractured", 4), ("Hardware", 2)):
        for i in range(n):
            _png(tmp_path / name / f"{name}_{i}.png", 40 * (i + 1))
    dataset = load_dataset(tmp_path)
    assert dataset.layout is Layout.CLASS_FOLDERS
    assert dataset.class_names == ("Fractured", "Hardware", "Non_fractured")
    assert dataset.class_names[dataset.positive_index] == "Fractured"
    assert dataset.counts() == {"Fractured": 3, "Hardware": 2, "Non_fractured": 4}


def test_fracatlas_layout_with_body_parts(shared_dir: Path, tmp_path: Path) -> None:
    atlas = shared_dir / "data" / "fracatlas"
    for folder, names in (
        ("Fractured", ["IMG0000019.jpg", "IMG0000025.jpg"]),
        ("Non_fractured", ["IMG0000000.jpg", "IMG0000001.jpg"]),
    ):
        (tmp_path / "images" / folder).mkdir(parents=True)
        for name in names:
            shutil.copyfile(atlas / "images" / folder / name, tmp_path / "images" / folder / name)
    shutil.copyfile(atlas / "dataset.csv", tmp_path / "dataset.csv")
    dataset = load_dataset(tmp_path)
    assert dataset.class_names == ("Fractured", "Non_fractured")
    parts = {e.path.name: e.body_part for e in dataset.examples}
    assert parts["IMG0000000.jpg"] == "leg"
    assert all(part in {"hand", "leg", "hip", "shoulder", "mixed"} for part in parts.values())


def test_presplit_layout_keeps_its_split(tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        for cls in ("positive", "negative"):
            for i in range(3):
                _png(tmp_path / split / cls / f"{split}{cls}{i}.png")
    dataset = load_dataset(tmp_path)
    assert dataset.layout is Layout.PRESPLIT
    assert dataset.class_names[dataset.positive_index] == "positive"
    splits = split_examples(dataset, seed=1)
    for split, folder in ((Split.TRAIN, "train"), (Split.VAL, "valid"), (Split.TEST, "test")):
        assert len(splits.part(split)) == 6
        assert all(e.path.parent.parent.name == folder for e in splits.part(split))


def test_study_folders_group_by_patient(tmp_path: Path) -> None:
    for part in ("XR_WRIST", "XR_HAND"):
        for patient in range(8):
            for study, suffix in ((1, "positive"), (2, "negative")):
                folder = tmp_path / part / f"patient{patient:05d}" / f"study{study}_{suffix}"
                for image in range(2):
                    _png(folder / f"image{image}.png")
    dataset = load_dataset(tmp_path)
    assert dataset.layout is Layout.STUDY_FOLDERS
    assert dataset.class_names == ("negative", "positive")
    assert {e.body_part for e in dataset.examples} == {"wrist", "hand"}
    splits = split_examples(dataset, seed=3, val_fraction=0.25, test_fraction=0.25)
    groups = {s: {e.group for e in splits.part(s)} for s in Split}
    assert not groups[Split.TRAIN] & groups[Split.VAL]
    assert not groups[Split.TRAIN] & groups[Split.TEST]
    assert not groups[Split.VAL] & groups[Split.TEST]


def test_splits_are_deterministic_stratified_and_disjoint(tmp_path: Path) -> None:
    for i in range(20):
        _png(tmp_path / "Fractured" / f"f{i}.png")
    for i in range(80):
        _png(tmp_path / "Non_fractured" / f"n{i}.png")
    dataset = load_dataset(tmp_path)
    first = split_examples(dataset, seed=7)
    again = split_examples(load_dataset(tmp_path), seed=7)
    other = split_examples(dataset, seed=8)
    assert first == again
    assert first.test != other.test
    for split in (Split.VAL, Split.TEST):
        assert dataset.counts(first.part(split)) == {"Fractured": 3, "Non_fractured": 12}
    paths = [e.path for s in Split for e in first.part(s)]
    assert len(paths) == len(set(paths)) == 100


def test_unknown_positive_class_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cats"):
        positive_class_index(["cats", "dogs"])
    assert positive_class_index(["cats", "dogs"], "Dogs") == 1


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_corrupt_and_truncated_pictures_are_reported_not_fatal(tmp_path: Path) -> None:
    good = _png(tmp_path / "good.png")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ok, buffer = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
    assert ok
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.tobytes()[: len(buffer) // 2])
    cached = build_cache(
        [good, corrupt, truncated], 32, crop=True, cache_dir=tmp_path / "c", workers=1
    )
    assert cached.loaded.tolist() == [True, False, True]
    problems = {Path(p.path).name: p for p in cached.problems}
    assert problems["corrupt.jpg"].skipped
    assert problems["truncated.jpg"].problem == "truncated"
    assert not problems["truncated.jpg"].skipped
    assert cached.images.shape == (3, 32, 32)
    reused = build_cache([good, corrupt, truncated], 32, crop=True, cache_dir=tmp_path / "c")
    assert reused.loaded.tolist() == [True, False, True]
    np.testing.assert_array_equal(np.asarray(reused.images), np.asarray(cached.images))

"""Labelled picture collections on disk -> a list of examples, and deterministic splits.

Three layouts are recognised:

* class per folder: ``<root>/<class>/*.png|jpg`` (FracAtlas keeps them under ``images/``);
* pre-split: ``<root>/train|val|test/<class>/...``: the given split is kept;
* study folders: ``<root>/XR_<PART>/<patient>/<study>_positive|negative/*.png``: the label is the
  study's suffix, the group (kept together in one split) is the patient, the body part is ``PART``.

Any number of classes is allowed; one of them is the positive ("fractured") class.
"""

from __future__ import annotations

import csv
import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: File name endings read as pictures.
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
#: Class names taken as the positive class, in order of preference (case-insensitive).
POSITIVE_NAMES = ("fractured", "fracture", "positive", "abnormal")
#: Names of the pre-split folders.
SPLIT_NAMES = ("train", "val", "test")
#: Aliases accepted for a validation folder.
_VAL_ALIASES = {"val": "val", "valid": "val", "validation": "val", "train": "train", "test": "test"}
#: FracAtlas body-region columns in dataset.csv.
BODY_PARTS = ("hand", "leg", "hip", "shoulder", "mixed")


class DatasetError(ValueError):
    """A folder that does not hold a recognisable labelled data set."""


class Layout(enum.StrEnum):
    """How the examples are arranged on disk."""

    CLASS_FOLDERS = "class_folders"
    PRESPLIT = "presplit"
    STUDY_FOLDERS = "study_folders"


class Split(enum.StrEnum):
    """The three disjoint parts of a data set."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled picture.

    ``group`` keeps related pictures (one patient's) in the same split; ``split`` is set only
    when the layout fixes it; ``body_part`` is known for some layouts only.
    """

    path: Path
    label: int
    group: str
    split: Split | None = None
    body_part: str | None = None


@dataclass(frozen=True, slots=True)
class Dataset:
    """Examples plus the class names (index = label) and the positive class's index."""

    root: Path
    layout: Layout
    class_names: tuple[str, ...]
    positive_index: int
    examples: tuple[Example, ...]

    def counts(self, examples: Sequence[Example] | None = None) -> dict[str, int]:
        """Number of examples per class name."""
        chosen = self.examples if examples is None else examples
        labels = np.bincount([e.label for e in chosen], minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, labels, strict=True)}


@dataclass(frozen=True, slots=True)
class Splits:
    """Train, validation and held-out test examples; disjoint by construction."""

    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]

    def part(self, split: Split) -> tuple[Example, ...]:
        return {Split.TRAIN: self.train, Split.VAL: self.val, Split.TEST: self.test}[split]

    def to_json(self, root: Path) -> dict[str, list[str]]:
        """File lists relative to ``root``, for reports and for reproducing the split."""
        return {
            split.value: sorted(str(e.path.relative_to(root)) for e in self.part(split))
            for split in Split
        }


def _pictures(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES
    )


def positive_class_index(class_names: Sequence[str], positive: str | None = None) -> int:
    """Index of the positive class: ``positive`` if given, else the first known positive name."""
    lowered = [name.lower() for name in class_names]
    if positive is not None:
        if positive.lower() not in lowered:
            raise DatasetError(f"positive class {positive!r} is not one of {list(class_names)}")
        return lowered.index(positive.lower())
    for name in POSITIVE_NAMES:
        if name in lowered:
            return lowered.index(name)
    raise DatasetError(
        f"cannot tell the positive class among {list(class_names)}; name it explicitly"
    )


def _class_folder_root(root: Path) -> Path:
    """FracAtlas keeps its class folders under ``images/``; accept both."""
    images = root / "images"
    return images if images.is_dir() else root


def _sub_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(root: Path) -> Layout:
    """Recognise the layout of ``root`` from its folder names."""
    if not root.is_dir():
        raise DatasetError(f"data folder {str(root)!r} does not exist")
    names = {p.name.lower() for p in _sub_folders(root)}
    if any(name.startswith("xr_") for name in names):
        return Layout.STUDY_FOLDERS
    if "train" in names and names & {"val", "valid", "validation", "test"}:
        return Layout.PRESPLIT
    return Layout.CLASS_FOLDERS


def _body_parts(root: Path) -> dict[str, str]:
    """FracAtlas ``dataset.csv`` body region per file name; empty when there is no such file."""
    table = root / "dataset.csv"
    if not table.is_file():
        return {}
    parts: dict[str, str] = {}
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            flagged = [part for part in BODY_PARTS if row.get(part, "0").strip() == "1"]
            name = row.get("image_id", "")
            if name:
                parts[name] = "mixed" if "mixed" in flagged or len(flagged) != 1 else flagged[0]
    return parts


def _load_class_folders(root: Path, positive: str | None) -> Dataset:
    base = _class_folder_root(root)
    folders = [f for f in _sub_folders(base) if _pictures(f)]
    if len(folders) < 2:
        raise DatasetError(f"expected at least two class folders with pictures in {str(base)!r}")
    class_names = tuple(f.name for f in folders)
    parts = _body_parts(root)
    examples = [
        Example(path=p, label=label, group=p.stem, body_part=parts.get(p.name))
        for label, folder in enumerate(folders)
        for p in _pictures(folder)
    ]
    return Dataset(
        root,
        Layout.CLASS_FOLDERS,
        class_names,
        positive_class_index(class_names, positive),
        tuple(examples),
    )


def _load_presplit(root: Path, positive: str | None) -> Dataset:
    split_folders = {
        Split(_VAL_ALIASES[f.name.lower()]): f
        for f in _sub_folders(root)
        if f.name.lower() in _VAL_ALIASES
    }
    class_names = tuple(
        sorted({c.name for f in split_folders.values() for c in _sub_folders(f) if _pictures(c)})
    )
    if len(class_names) < 2:
        raise DatasetError(f"expected at least two class folders under {str(root)!r}/train")
    examples = [
        Example(path=p, label=class_names.index(c.name), group=p.stem, split=split)
        for split, folder in sorted(split_folders.items())
        for c in _sub_folders(folder)
        if c.name in class_names
        for p in _pictures(c)
    ]
    return Dataset(
        root,
        Layout.PRESPLIT,
        class_names,
        positive_class_index(class_names, positive),
        tuple(examples),
    )


def _load_study_folders(root: Path) -> Dataset:
    class_names = ("negative", "positive")
    examples: list[Example] = []
    for part_folder in _sub_folders(root):
        if not part_folder.name.lower().startswith("xr_"):
            continue
        part = part_folder.name[3:].lower()
        for patient in _sub_folders(part_folder):
            for study in _sub_folders(patient):
                suffix = study.name.rsplit("_", 1)[-1].lower()
                if suffix not in class_names:
                    continue
                examples.extend(
                    Example(
                        path=p,
                        label=class_names.index(suffix),
                        group=f"{part}/{patient.name}",
                        body_part=part,
                    )
                    for p in _pictures(study)
                )
    if not examples:
        raise DatasetError(f"no study folders ending in _positive/_negative in {str(root)!r}")
    return Dataset(root, Layout.STUDY_FOLDERS, class_names, 1, tuple(examples))


def load_dataset(root: Path, *, positive: str | None = None) -> Dataset:
    """Find the labelled pictures under ``root`` in any of the recognised layouts."""
    layout = detect_layout(root)
    if layout is Layout.STUDY_FOLDERS:
        return _load_study_folders(root)
    if layout is Layout.PRESPLIT:
        return _load_presplit(root, positive)
    return _load_class_folders(root, positive)


def _group_rank(group: str, seed: int) -> str:
    """A stable pseudo-random order of groups for a seed (independent of the machine)."""
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def split_examples(
    dataset: Dataset, *, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> Splits:
    """Deterministic, stratified, group-aware split into train / validation / test.

    A pre-split layout keeps its own split (a missing validation split is carved out of train,
    a missing test split out of train as well). Otherwise, per class, groups are ordered by a
    hash of ``(seed, group)`` and the first ``test_fraction`` of them go to test, the next
    ``val_fraction`` to validation. A group's class is the class of its first example.
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0):
        raise ValueError(f"fractions must be in [0, 1), got {val_fraction}, {test_fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val + test fractions must be < 1, got {val_fraction + test_fraction}")
    fixed = {s: [e for e in dataset.examples if e.split is s] for s in Split}
    free = [e for e in dataset.examples if e.split is None]
    need_val = not fixed[Split.VAL]
    need_test = not fixed[Split.TEST]
    if dataset.layout is Layout.PRESPLIT:
        free, fixed[Split.TRAIN] = fixed[Split.TRAIN], []
    groups: dict[str, list[Example]] = {}
    for example in free:
        groups.setdefault(example.group, []).append(example)
    by_class: dict[int, list[str]] = {}
    for name, members in groups.items():
        by_class.setdefault(members[0].label, []).append(name)
    out: dict[Split, list[Example]] = {s: list(fixed[s]) for s in Split}
    for names in by_class.values():
        ordered = sorted(names, key=lambda g: _group_rank(g, seed))
        n_test = round(len(ordered) * test_fraction) if need_test else 0
        n_val = round(len(ordered) * val_fraction) if need_val else 0
        for index, name in enumerate(ordered):
            split = (
                Split.TEST
                if index < n_test
                else Split.VAL
                if index < n_test + n_val
                else Split.TRAIN
            )
            out[split].extend(groups[name])
    key = lambda e: str(e.path)  # noqa: E731
    return Splits(*(tuple(sorted(out[s], key=key)) for s in Split))


def describe(dataset: Dataset, splits: Splits) -> dict[str, object]:
    """A JSON-able summary of the data set and its split, for model cards and reports."""
    return {
        "root_name": dataset.root.name,
        "layout": dataset.layout.value,
        "class_names": list(dataset.class_names),
        "positive_class": dataset.class_names[dataset.positive_index],
        "counts": {s.value: dataset.counts(splits.part(s)) for s in Split},
    }

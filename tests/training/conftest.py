"""Fixtures the training tests share, built once per test session.

``lite_run`` trains a small EfficientNet-Lite (both stages) for about a minute; several test
modules read it and none writes into it, so one run serves them all.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from training.cli import register

N_PER_CLASS = 20


@pytest.fixture(scope="session")
def atlas_copy(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small FracAtlas-shaped folder: images/<class>/, dataset.csv, yolo/."""
    source = shared_dir / "data" / "fracatlas"
    root = tmp_path_factory.mktemp("atlas")
    for folder in ("Fractured", "Non_fractured"):
        (root / "images" / folder).mkdir(parents=True)
        for path in sorted((source / "images" / folder).glob("*.jpg"))[:N_PER_CLASS]:
            shutil.copyfile(path, root / "images" / folder / path.name)
    (root / "yolo").mkdir()
    for path in (root / "images" / "Fractured").iterdir():
        label = source / "yolo" / f"{path.stem}.txt"
        if label.is_file():
            shutil.copyfile(label, root / "yolo" / label.name)
    shutil.copyfile(source / "dataset.csv", root / "dataset.csv")
    (root / "images" / "Non_fractured" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


@pytest.fixture(scope="session")
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test CLI."""

    register(app)
    return app


@pytest.fixture(scope="session")
def lite_run(
    atlas_copy: Path,
    cli: typer.Typer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    out = tmp_path_factory.mktemp("lite") / "run"
    args = [
        "train",
        "--data",
        str(atlas_copy),
        "--out",
        str(out),
        "--arch",
        "efficientnet-lite0",
        "--weights",
        "imagenet",
        "--freeze-blocks",
        "5",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--seed",
        "3",
        "--localisation-epochs",
        "1",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out

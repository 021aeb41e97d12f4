"""The second training stage: the fracture map refined on the boxes, classifier untouched."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import typer
from keras import layers
from typer.testing import CliRunner

from inference.model_package import load_package
from inference.preprocess import GeometryTransform
from training.architectures import LOCALISATION_CONTEXT_LAYER, LOCALISATION_LAYER, build_model
from training.cache import geometry_row
from training.localise import (
    BRANCH_OUTPUT,
    LOCALISATION_STATE,
    LOCALISED_AVERAGE,
    LOCALISED_LAST,
    LOCALISED_MODEL,
    MEMBER_PREFIX,
    LocaliseConfig,
    LocaliseState,
    branch_first_stage,
    combine,
    ensemble_maps,
    head_weights,
    is_head_layer,
    member_run_seeds,
    peak_in_box_share,
    peak_loss,
    with_localisation_branch,
)
from training.names import Architecture
from training.pipeline import PreparedSplit


def _stage_one_model(size: int) -> keras.Model:
    """A Lite model as stage 1 built it before the 1/8 level: its map is the 1/16 context's."""
    model = build_model(Architecture.EFFICIENTNET_LITE0, size, 2, weights=None)
    context = model.get_layer(LOCALISATION_CONTEXT_LAYER).output
    coarse = layers.Conv2D(1, 1, activation="sigmoid", name=LOCALISATION_LAYER)(context)
    return keras.Model(model.inputs, [model.outputs[0], coarse], name=model.name)


def test_the_branch_and_fine_map_are_added_without_touching_the_classifier() -> None:
    old = _stage_one_model(64)
    assert tuple(old.outputs[1].shape) == (None, 4, 4, 1)
    refined = with_localisation_branch(old)
    assert tuple(refined.outputs[1].shape) == (None, 8, 8, 1)
    assert BRANCH_OUTPUT in {layer.name for layer in refined.layers}
    x = np.random.default_rng(1).random((3, 64, 64, 1)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(old(x, training=False)[0]), np.asarray(refined(x, training=False)[0])
    )
    # The branch starts as a copy of the trained stages; the head keeps its matching layers.
    np.testing.assert_array_equal(
        refined.get_layer("loc_block7_project_conv").get_weights()[0],
        old.get_layer("block7_project_conv").get_weights()[0],
    )
    np.testing.assert_array_equal(
        refined.get_layer("loc_top_conv").get_weights()[0],
        old.get_layer("loc_top_conv").get_weights()[0],
    )
    assert refined.get_layer("loc_top_conv") is not old.get_layer("loc_top_conv")
    # Nothing the classifier uses belongs to the head that stage 2 trains.
    classifier = keras.Model(refined.inputs, refined.outputs[0])
    assert not any(is_head_layer(layer) for layer in classifier.layers)
    # A model that has the branch already is taken as it is.
    assert with_localisation_branch(refined) is refined


def test_a_branch_through_the_head_gives_the_map_its_own_context() -> None:
    old = _stage_one_model(64)
    refined = with_localisation_branch(old, 2, through_head=True)
    names = {layer.name for layer in refined.layers}
    # Copies of the 1/8 stage, the later stages and the head, with the trained weights.
    assert {"loc_block3_project_conv", "loc_block15_project_conv", "loc_head_conv"} <= names
    np.testing.assert_array_equal(
        refined.get_layer("loc_head_conv").get_weights()[0],
        old.get_layer("head_conv").get_weights()[0],
    )
    x = np.random.default_rng(4).random((2, 64, 64, 1)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(old(x, training=False)[0]), np.asarray(refined(x, training=False)[0])
    )
    classifier = keras.Model(refined.inputs, refined.outputs[0])
    assert not any(is_head_layer(layer) for layer in classifier.layers)


def _with_head_bias(model: keras.Model, bias: float) -> keras.Model:
    """``model`` with its map's output bias set to ``bias`` (a different map, same classifier)."""
    conv = model.get_layer(LOCALISATION_LAYER)
    kernel, _ = conv.get_weights()
    conv.set_weights([kernel, np.full((1,), bias, np.float32)])
    return model


def test_an_ensemble_shows_the_mean_of_its_members_maps(tmp_path: Path) -> None:
    old = _stage_one_model(64)
    path = tmp_path / "old.keras"
    old.save(path)
    base = _with_head_bias(with_localisation_branch(old), -1.0)
    member = _with_head_bias(
        with_localisation_branch(keras.models.load_model(path, compile=False)), 1.5
    )
    ensemble = ensemble_maps(base, [member])
    x = np.random.default_rng(5).random((3, 64, 64, 1)).astype(np.float32)
    maps = [np.asarray(m(x, training=False)[1]) for m in (base, member)]
    assert not np.allclose(maps[0], maps[1])
    np.testing.assert_allclose(
        np.asarray(ensemble(x, training=False)[1]), (maps[0] + maps[1]) / 2, atol=1e-6
    )
    np.testing.assert_array_equal(
        np.asarray(base(x, training=False)[0]), np.asarray(ensemble(x, training=False)[0])
    )
    # Plain Keras layers: it loads without custom code; every new layer is the map's.
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(
        np.asarray(loaded(x, training=False)[1]), (maps[0] + maps[1]) / 2, atol=1e-6
    )
    names = [layer.name for layer in loaded.layers]
    assert [n for n in names if n.startswith(MEMBER_PREFIX)] == [
        f"{MEMBER_PREFIX}0",
        f"{MEMBER_PREFIX}1",
    ]
    classifier = keras.Model(loaded.inputs, loaded.outputs[0])
    assert not any(is_head_layer(layer) for layer in classifier.layers)


def test_an_ensemble_member_of_another_classifier_is_refused() -> None:
    base = with_localisation_branch(_stage_one_model(64))
    stranger = with_localisation_branch(_stage_one_model(64))  # other random weights
    with pytest.raises(ValueError, match="another classifier"):
        ensemble_maps(base, [stranger])
    with pytest.raises(ValueError, match="at least one member"):
        ensemble_maps(base, [])
    with pytest.raises(ValueError, match="no localisation branch"):
        ensemble_maps(base, [_stage_one_model(64)])


def test_an_ensemble_is_not_nested_and_its_branches_start_alike(tmp_path: Path) -> None:
    old = _stage_one_model(64)
    path = tmp_path / "old.keras"
    old.save(path)

    def again() -> keras.Model:
        return keras.models.load_model(path, compile=False)

    base = with_localisation_branch(old)
    early = with_localisation_branch(again(), 1)
    assert (branch_first_stage(base), branch_first_stage(early)) == (2, 1)
    with pytest.raises(ValueError, match="another stage"):
        ensemble_maps(base, [early])
    # Branches from stage 1 read the 1/2 features; their ensemble is built from those.
    second = with_localisation_branch(again(), 1)
    pair = ensemble_maps(early, [second])
    x = np.random.default_rng(7).random((2, 64, 64, 1)).astype(np.float32)
    maps = [np.asarray(m(x, training=False)[1]) for m in (early, second)]
    np.testing.assert_allclose(
        np.asarray(pair(x, training=False)[1]), (maps[0] + maps[1]) / 2, atol=1e-6
    )
    with pytest.raises(ValueError, match="an ensemble already"):
        ensemble_maps(pair, [base])


@pytest.mark.parametrize(
    ("seed", "run_seed", "members", "expected"),
    [
        (42, None, 4, [None, 1, 2, 3]),  # the bundled model's members
        (2, None, 4, [None, 1, 3, 4]),  # member 0 draws with the split seed 2: skipped
        (42, 3, 3, [3, 1, 2]),
        (42, None, 1, [None]),
    ],
)
def test_member_run_seeds_never_repeat_member_zero(
    seed: int, run_seed: int | None, members: int, expected: list[int | None]
) -> None:
    config = LocaliseConfig(seed=seed, run_seed=run_seed)
    assert member_run_seeds(config, members) == expected


def test_a_model_without_a_localisation_head_is_refused() -> None:
    small = build_model(Architecture.SMALL, 64, 2, weights=None)
    with pytest.raises(ValueError, match="no localisation head"):
        with_localisation_branch(small)


def _map(peak: tuple[int, int], size: int = 6) -> np.ndarray:
    heat = np.full((1, size, size, 1), 0.05, np.float32)
    heat[0, peak[1], peak[0], 0] = 0.9
    return heat


def test_the_peak_loss_rewards_a_peak_inside_the_box() -> None:
    box = np.zeros((1, 6, 6, 1), np.float32)
    box[0, 1:3, 1:3, 0] = 1.0
    inside = float(peak_loss(tf.constant(box), tf.constant(_map((2, 2))))[0])
    outside = float(peak_loss(tf.constant(box), tf.constant(_map((5, 5))))[0])
    assert inside < outside
    # Without boxes only the cell term counts: a quiet map beats a map with a peak.
    empty = tf.zeros((1, 6, 6, 1))
    quiet = float(peak_loss(empty, tf.fill((1, 6, 6, 1), 0.05))[0])
    loud = float(peak_loss(empty, tf.constant(_map((2, 2))))[0])
    assert quiet < loud


def _brightness_model(size: int) -> keras.Model:
    """A stand-in whose map is the picture's brightness pooled to 1/8 (peak = brightest spot)."""
    inputs = keras.Input((size, size, 1))
    pooled = layers.AveragePooling2D(8)(inputs)
    prediction = layers.Dense(1)(layers.Flatten()(pooled))
    return keras.Model(inputs, [prediction, pooled])


def test_peak_in_box_counts_fractured_pictures_whose_brightest_spot_is_boxed() -> None:
    size = 32
    images = np.zeros((4, size, size), np.uint8)
    masks = np.zeros((4, size, size), np.uint8)
    masks[:, 0:8, 0:8] = 1  # every box in the top-left corner
    images[0, 0:8, 0:8] = 255  # fractured, peak in its box
    images[1, 24:32, 24:32] = 255  # fractured, peak elsewhere
    images[2, 0:8, 0:8] = 255  # not fractured: not counted
    images[3, 0:8, 0:8] = 255  # fractured without boxes: not counted
    geometry = np.stack([geometry_row(_identity(size)) for _ in range(4)])
    part = PreparedSplit(
        examples=(),
        images=images,
        labels=np.array([0, 0, 1, 0]),
        masks=masks,
        has_boxes=np.array([True, True, False, False]),
        geometry=geometry,
    )
    share, counted = peak_in_box_share(_brightness_model(size), part, positive_index=0)
    assert (share, counted) == (0.5, 2)


def _identity(size: int) -> GeometryTransform:
    from inference.preprocess import CropBox

    return GeometryTransform(
        original_width=size,
        original_height=size,
        crop=CropBox(0, 0, size, size),
        scale=1.0,
        pad_x=0,
        pad_y=0,
        size=size,
    )


@pytest.mark.slow
def test_two_stage_training_keeps_the_prediction_and_refines_the_map(
    lite_run: Path,
) -> None:
    stage_one = keras.models.load_model(lite_run / "best.keras", compile=False)
    refined = keras.models.load_model(lite_run / LOCALISED_MODEL, compile=False, safe_mode=True)
    x = np.random.default_rng(2).random((4, 64, 64, 1)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(stage_one(x, training=False)[0]), np.asarray(refined(x, training=False)[0])
    )
    stage_one_map = np.asarray(stage_one(x, training=False)[1])
    assert not np.array_equal(stage_one_map, np.asarray(refined(x, training=False)[1]))
    state = LocaliseState.load(lite_run)
    assert state.epochs_done == 1
    assert len(state.history) == 1
    card = load_package(lite_run / "package").card
    assert card.training_data["localisation_stage"]["epochs"] == 1


def localise_args(run: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """``localise`` on the tiny run's package, batch 8, plus ``extra``."""
    return [
        "localise",
        "--model",
        str(run / "package"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "8",
        *extra,
    ]


@pytest.mark.slow
def test_localise_refines_a_package_with_two_maps_and_resumes_without_training_again(
    lite_run: Path,
    atlas_copy: Path,
    cli: typer.Typer,
    tmp_path: Path,
) -> None:
    out = tmp_path / "ens"
    args = localise_args(
        lite_run, atlas_copy, out, "--epochs", "1", "--members", "2", "--version", "1.1.0"
    )
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 maps: validation peak in box" in result.output
    package = load_package(out / "package")
    assert package.card.version == "1.1.0"
    assert package.card.name == load_package(lite_run / "package").card.name
    stage = package.card.training_data["localisation_stage"]
    assert stage["epochs"] == 1
    assert stage["ensemble"]["members"] == 2
    assert [m["run_seed"] for m in stage["ensemble"]["member_stages"]] == [None, 1]
    assert package.card.training_data["seed"] == 3  # the card's split seed, not the default
    assert (out / "package" / "evaluation" / "metrics.json").is_file()
    member = json.loads((out / "member-1" / LOCALISATION_STATE).read_text())
    assert member["config"]["run_seed"] == 1
    assert member["config"]["seed"] == 3  # the same split as member 0
    first = keras.models.load_model(out / LOCALISED_MODEL, compile=False)
    second = keras.models.load_model(out / "member-1" / LOCALISED_MODEL, compile=False)
    x = np.random.default_rng(6).random((3, 64, 64, 1)).astype(np.float32)
    maps = [np.asarray(m(x, training=False)[1]) for m in (first, second)]
    assert not np.array_equal(maps[0], maps[1])  # other draws, order and augmentation
    np.testing.assert_allclose(
        np.asarray(package.model(x, training=False)[1]), (maps[0] + maps[1]) / 2, atol=1e-6
    )
    # Re-running resumes every member: nothing is trained again.
    before = [(folder / LOCALISED_MODEL).stat().st_mtime_ns for folder in (out, out / "member-1")]
    again = CliRunner().invoke(cli, [*args, "--no-export"])
    assert again.exit_code == 0, again.output
    for folder in (out, out / "member-1"):
        assert json.loads((folder / LOCALISATION_STATE).read_text())["epochs_done"] == 1
    after = [(folder / LOCALISED_MODEL).stat().st_mtime_ns for folder in (out, out / "member-1")]
    assert after == before
    # ensemble-maps assembles the same from the runs (here without exporting again).

    def assemble(folder: str, *extra: str) -> list[str]:
        return [
            "ensemble-maps",
            "--model",
            str(out / LOCALISED_MODEL),
            "--member",
            str(out / "member-1"),
            "--data",
            str(atlas_copy),
            "--out",
            str(tmp_path / folder),
            *extra,
            "--no-export",
        ]

    assembled = CliRunner().invoke(cli, assemble("assembled"))
    assert assembled.exit_code == 0, assembled.output  # split seed 3, read from the member's run
    assert "member 1: validation peak in box" in assembled.output
    assert "ensemble of 2 maps" in assembled.output
    other_split = CliRunner().invoke(cli, assemble("other", "--seed", "5"))
    assert other_split.exit_code != 0
    assert "split seed" in other_split.output


@pytest.mark.slow
def test_averaging_epochs_give_the_mean_of_their_maps_and_resume(
    lite_run: Path,
    atlas_copy: Path,
    cli: typer.Typer,
    tmp_path: Path,
) -> None:
    out = tmp_path / "avg"

    def run(average_epochs: int) -> None:
        args = localise_args(
            lite_run,
            atlas_copy,
            out,
            "--epochs",
            "0",
            "--average-epochs",
            str(average_epochs),
            "--average-with-validation",
            "--no-export",
        )
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output

    run(1)
    first = head_weights(keras.models.load_model(out / LOCALISED_AVERAGE, compile=False))
    run(2)  # resumes: one more epoch, averaged with the first
    second = head_weights(keras.models.load_model(out / LOCALISED_LAST, compile=False))
    averaged = keras.models.load_model(out / LOCALISED_AVERAGE, compile=False)
    for mean, a, b in zip(head_weights(averaged), first, second, strict=True):
        np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    state = LocaliseState.load(out)
    assert (state.epochs_done, state.averaged_epochs) == (0, 2)
    assert [row["epoch"] for row in state.average_history] == [1, 2]
    # The classifier is the package's, to the last bit.
    stage_one = keras.models.load_model(lite_run / "best.keras", compile=False)
    x = np.random.default_rng(4).random((3, 64, 64, 1)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(stage_one(x, training=False)[0]), np.asarray(averaged(x, training=False)[0])
    )


def test_localise_with_nothing_to_do_is_refused(
    cli: typer.Typer,
    tmp_path: Path,
) -> None:
    model = tmp_path / "m.keras"
    _stage_one_model(32).save(model)
    result = CliRunner().invoke(
        cli,
        [
            "localise",
            "--model",
            str(model),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--epochs",
            "0",
        ],
    )
    assert result.exit_code != 0
    assert "nothing to do" in result.output


def test_combined_splits_keep_every_picture_in_order() -> None:
    def part(count: int, offset: int) -> PreparedSplit:
        return PreparedSplit(
            examples=(),
            images=np.full((count, 4, 4), offset, np.uint8),
            labels=np.arange(count) + offset,
            masks=np.zeros((count, 4, 4), np.uint8),
            has_boxes=np.zeros(count, bool),
            geometry=np.zeros((count, 7)),
        )

    both = combine(part(2, 0), part(3, 10))
    assert both.labels.tolist() == [0, 1, 10, 11, 12]
    assert both.images.shape == (5, 4, 4)
    assert both.masks is not None
    assert both.masks.shape == (5, 4, 4)
    assert (
        combine(
            part(1, 0), PreparedSplit((), np.zeros((1, 4, 4), np.uint8), np.zeros(1, np.int64))
        ).masks
        is None
    )

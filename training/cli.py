"""The ``train``, ``evaluate`` and ``export`` commands; :func:`register` adds them to a CLI."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer

from training.names import Architecture

log = logging.getLogger(__name__)

#: Where ``train`` writes the package inside its run folder, unless told otherwise.
PACKAGE_DIR = "package"
#: Where the package's evaluation on the held-out split goes, inside the package folder.
EVALUATION_DIR = "evaluation"

SplitSeedOption = Annotated[
    int | None, typer.Option(help="Split seed (default: the card's, or 42).")
]
ExportOption = Annotated[bool, typer.Option(help="Calibrate, write the package, evaluate.")]
PackageOutOption = Annotated[
    Path | None, typer.Option(help="Package folder (default: OUT/package).")
]
CardNameOption = Annotated[str | None, typer.Option(help="Package name (default: the card's).")]
CacheDirOption = Annotated[Path | None, typer.Option(help="Pixel cache (default: OUT/../cache).")]
MembersOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Second stage: maps trained with different run seeds whose mean the model "
        "shows (1: one map).",
    ),
]
DataOption = Annotated[
    Path, typer.Option(help="Data folder: class folders, train/val/test/<class>, or XR_* studies.")
]


def _weights(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def train(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Run folder; re-running the command resumes it.")],
    arch: Annotated[Architecture, typer.Option(help="Architecture.")] = Architecture.SMALL,
    weights: Annotated[str, typer.Option(help="none, imagenet, or a weights file.")] = "none",
    epochs: Annotated[int, typer.Option(min=1)] = 60,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    image_size: Annotated[int, typer.Option(min=32)] = 320,
    seed: int = 42,
    augment: bool = True,
    class_weights: bool = True,
    crop: Annotated[bool, typer.Option(help="Anatomy crop before resizing.")] = True,
    time_budget_minutes: Annotated[float | None, typer.Option(min=0.0)] = None,
    freeze_blocks: Annotated[
        int,
        typer.Option(
            min=0, help="EfficientNet-Lite: keep the stem and this many first blocks frozen."
        ),
    ] = 0,
    positive_class: Annotated[str | None, typer.Option(help="Name of the positive class.")] = None,
    export: ExportOption = True,
    package_out: PackageOutOption = None,
    name: Annotated[
        str | None, typer.Option(help="Package name (default: the model's, e.g. fracture-small).")
    ] = None,
    version: str = "1.0.0",
    cache_dir: CacheDirOption = None,
    localisation_epochs: Annotated[
        int,
        typer.Option(
            min=0,
            help="EfficientNet-Lite: epochs of the second stage that refines the fracture map "
            "on the boxes with the classifier frozen (0: none).",
        ),
    ] = 0,
    branch_first_stage: Annotated[
        int,
        typer.Option(
            min=1, max=4, help="Second stage: first backbone stage copied into the map's branch."
        ),
    ] = 2,
    branch_through_head: Annotated[
        bool, typer.Option(help="Second stage: the branch also copies the later stages and head.")
    ] = False,
    localisation_patience: Annotated[
        int,
        typer.Option(min=1, help="Second stage: halve the rate after these flat epochs."),
    ] = 3,
    localisation_average_epochs: Annotated[
        int,
        typer.Option(
            min=0,
            help="Second stage: epochs after the chosen one whose map weights are averaged "
            "into the model (0: none).",
        ),
    ] = 0,
    localisation_average_with_validation: Annotated[
        bool, typer.Option(help="Second stage: the averaging epochs also train on validation.")
    ] = False,
    localisation_members: MembersOption = 1,
) -> None:
    """Train a fracture classifier; by default also export its package and evaluate it on test."""
    from training.export import load_trained
    from training.fit import TrainConfig
    from training.localise import LocaliseConfig
    from training.pipeline import SPLIT_FILE, train_stage

    _logging()
    config = TrainConfig(
        arch=arch,
        weights=_weights(weights),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        image_size=image_size,
        crop=crop,
        seed=seed,
        augment=augment,
        class_weights=class_weights,
        time_budget_minutes=time_budget_minutes,
        freeze_blocks=freeze_blocks,
    )
    prepared, state = train_stage(data, config, out, cache_dir=cache_dir, positive=positive_class)
    typer.echo(f"training finished: {state.stop_reason}; best val AUROC {state.best_auroc:.4f}")
    if not export:
        return
    package_dir = package_out or out / PACKAGE_DIR
    training: dict[str, Any] = {
        "seed": seed,
        "arch": arch.value,
        "weights": weights,
        "image_size": image_size,
        "epochs_trained": state.epochs_done,
        "best_epoch": state.best_epoch,
        "best_val_auroc": round(state.best_auroc, 6),
        "stop_reason": state.stop_reason,
        "train_minutes": round(state.train_seconds / 60, 1),
        "augment": augment,
        "class_weights": class_weights,
        "freeze_blocks": freeze_blocks,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
    }
    trained = load_trained(out)
    if localisation_epochs and len(trained.outputs) == 2:
        trained, training["localisation_stage"] = _localise(
            trained,
            prepared,
            out,
            LocaliseConfig(
                epochs=localisation_epochs,
                seed=seed,
                branch_first_stage=branch_first_stage,
                branch_through_head=branch_through_head,
                patience=localisation_patience,
                average_epochs=localisation_average_epochs,
                average_with_validation=localisation_average_with_validation,
            ),
            members=localisation_members,
        )
    _export_and_evaluate(
        trained,
        prepared,
        package_dir,
        data=data,
        split_file=out / SPLIT_FILE,
        crop=crop,
        name=name,
        version=version,
        training=training,
    )


def _localise(
    trained: Any, prepared: Any, out: Path, config: Any, members: int = 1
) -> tuple[Any, dict[str, Any]]:
    """The second stage (:mod:`training.localise`) into ``out``; the model and its summary.

    With ``members`` > 1, member ``i`` (1, 2, ...) is trained the same way into
    ``out/member-<i>`` with its own run seed (:func:`training.localise.member_run_seeds`) and
    the model returned maps with the mean of all the members' maps
    (:func:`training.localise.ensemble_maps`).
    """
    from dataclasses import replace

    from training.datasets import Split
    from training.localise import member_run_seeds, refine_localisation, stage_summary

    refined: list[Any] = []
    summaries: list[dict[str, Any] | None] = []
    for member, run_seed in enumerate(member_run_seeds(config, members)):
        member_config = replace(config, run_seed=run_seed)
        model, state = refine_localisation(
            trained,
            prepared.parts[Split.TRAIN],
            prepared.parts[Split.VAL],
            prepared.dataset.positive_index,
            out / f"member-{member}" if member else out,
            member_config,
        )
        typer.echo(
            f"localisation stage{f' member {member}' if members > 1 else ''}: best validation "
            f"peak in box {state.best_share:.3f} (epoch {state.best_epoch} of {state.epochs_done})"
        )
        refined.append(model)
        summaries.append(stage_summary(state, member_config))
    if members == 1:
        assert summaries[0] is not None
        return refined[0], summaries[0]
    return _ensemble(refined[0], refined[1:], prepared, summaries)


def _ensemble(
    base: Any, members: list[Any], prepared: Any, summaries: list[dict[str, Any] | None]
) -> tuple[Any, dict[str, Any]]:
    """``base`` mapping with the mean of its and ``members``' maps, and the stage's summary.

    ``summaries`` has one entry per model, base first (None where its run is not known).
    """
    from training.datasets import Split
    from training.localise import ensemble_maps, peak_in_box_share

    if len(summaries) != 1 + len(members):
        raise ValueError(f"{len(summaries)} summaries for {1 + len(members)} maps")
    model = ensemble_maps(base, members)
    share, counted = peak_in_box_share(
        model, prepared.parts[Split.VAL], prepared.dataset.positive_index
    )
    typer.echo(f"ensemble of {1 + len(members)} maps: validation peak in box {share:.3f}")
    summary = dict(summaries[0] or {})
    summary["ensemble"] = {
        "members": 1 + len(members),
        "val_peak_in_box": round(share, 4),
        "val_pictures": counted,
        "member_stages": summaries,
    }
    return model, summary


def _export_and_evaluate(
    trained: Any,
    prepared: Any,
    package_dir: Path,
    *,
    data: Path,
    split_file: Path,
    crop: bool,
    name: str | None,
    version: str,
    training: dict[str, Any],
) -> None:
    """Write the package (calibrated on validation) and evaluate it on the test split."""
    from training.datasets import Split
    from training.evaluate import evaluate as run_evaluation
    from training.export import add_card_metrics, export_package
    from training.pipeline import SPLIT_FILE

    card = export_package(
        trained,
        prepared,
        package_dir,
        crop=crop,
        name=name,
        version=version,
        training=training,
    )
    typer.echo(f"package written to {package_dir} (sha256 {card.sha256[:12]})")
    evaluation = package_dir / EVALUATION_DIR
    metrics = run_evaluation(
        package_dir,
        prepared.parts[Split.TEST].examples,
        prepared.dataset.positive_index,
        evaluation,
        data_root=data,
        title=f"{card.name} {card.version} on the held-out test split",
    )
    shutil.copyfile(split_file, evaluation / SPLIT_FILE)
    add_card_metrics(package_dir, "test", _summary(metrics))
    typer.echo(
        f"test AUROC {metrics['auroc']} (95% CI {metrics['auroc_ci']}); report in {evaluation}"
    )


def localise(
    model: Annotated[
        Path, typer.Option(help="Trained model: a package folder, a run folder or a .keras file.")
    ],
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Run folder; re-running the command resumes it.")],
    epochs: Annotated[
        int, typer.Option(min=0, help="Epochs of which the best on validation is kept.")
    ] = 12,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    seed: SplitSeedOption = None,
    run_seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the draws, shuffles and augmentation alone (default: the split "
            "seed); the split stays the same."
        ),
    ] = None,
    export: ExportOption = True,
    package_out: PackageOutOption = None,
    name: CardNameOption = None,
    version: str = "1.0.0",
    cache_dir: CacheDirOption = None,
    branch_first_stage: Annotated[
        int,
        typer.Option(
            min=1, max=4, help="First backbone stage (0-based) copied into the map's branch."
        ),
    ] = 2,
    branch_through_head: Annotated[
        bool, typer.Option(help="The branch also copies the later stages and the head.")
    ] = False,
    patience: Annotated[
        int, typer.Option(min=1, help="Halve the learning rate after this many flat epochs.")
    ] = 3,
    average_epochs: Annotated[
        int,
        typer.Option(
            min=0,
            help="Epochs after the kept one, at a constant rate, whose map weights are "
            "averaged into the model (0: none).",
        ),
    ] = 0,
    average_learning_rate: Annotated[float, typer.Option(min=0.0)] = 5e-4,
    average_with_validation: Annotated[
        bool, typer.Option(help="The averaging epochs also train on the validation pictures.")
    ] = False,
    members: MembersOption = 1,
) -> None:
    """Refine a trained EfficientNet-Lite's fracture map on the boxes, classifier frozen."""
    if epochs == 0 and average_epochs == 0:
        raise typer.BadParameter("nothing to do: give --epochs or --average-epochs")
    from training.localise import LocaliseConfig
    from training.pipeline import SPLIT_FILE

    _logging()
    loaded = _load_trained_stage(model, data, out, seed=seed, cache_dir=cache_dir)
    trained, prepared, training, crop = loaded.model, loaded.prepared, loaded.training, loaded.crop
    name = name or loaded.name
    split_seed = int(training["seed"])
    config = LocaliseConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=split_seed,
        run_seed=run_seed,
        branch_first_stage=branch_first_stage,
        branch_through_head=branch_through_head,
        patience=patience,
        average_epochs=average_epochs,
        average_learning_rate=average_learning_rate,
        average_with_validation=average_with_validation,
    )
    refined, training["localisation_stage"] = _localise(
        trained, prepared, out, config, members=members
    )
    if export:
        _export_and_evaluate(
            refined,
            prepared,
            package_out or out / PACKAGE_DIR,
            data=data,
            split_file=out / SPLIT_FILE,
            crop=crop,
            name=name,
            version=version,
            training=training,
        )


class _LoadedStage(NamedTuple):
    """A trained model, its data prepared as it was trained, and what its card recorded."""

    model: Any
    prepared: Any
    training: dict[str, Any]
    crop: bool
    name: str | None = None


def _load_trained_stage(
    model: Path, data: Path, out: Path, *, seed: int | None, cache_dir: Path | None
) -> _LoadedStage:
    """Load a package folder, run folder or ``.keras`` file and prepare ``data`` for it."""
    from inference.model_package import read_card
    from training.export import load_trained, model_input_size
    from training.pipeline import default_cache_dir, prepare_data, record_data

    training: dict[str, Any] = {}
    crop, name = True, None
    if (model / "model.json").is_file():
        card = read_card(model)
        trained = load_trained(model / card.model_file)
        crop, name = card.preprocessing.crop, card.name
        training = {
            key: value
            for key, value in card.training_data.items()
            if key not in ("localisation_stage",)
        }
    else:
        trained = load_trained(model)
    training["seed"] = seed if seed is not None else int(training.get("seed", 42))
    prepared = prepare_data(
        data,
        image_size=model_input_size(trained),
        crop=crop,
        seed=training["seed"],
        cache_dir=cache_dir or default_cache_dir(out),
    )
    record_data(prepared, out)
    return _LoadedStage(trained, prepared, training, crop, name)


def ensemble_maps(
    model: Annotated[
        Path,
        typer.Option(help="Package (or .keras file) whose classifier and map are the base."),
    ],
    member: Annotated[
        list[Path],
        typer.Option(
            help="A stage-2 model of the same classifier (.keras, or a localise run folder); "
            "repeat for each member."
        ),
    ],
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Run folder (split record, pixel cache).")],
    seed: SplitSeedOption = None,
    export: ExportOption = True,
    package_out: PackageOutOption = None,
    name: CardNameOption = None,
    version: str = "1.0.0",
    cache_dir: CacheDirOption = None,
) -> None:
    """Show the mean of several stage-2 maps of one classifier (reports validation shares)."""
    from inference.model_package import read_card
    from training.datasets import Split
    from training.export import load_trained
    from training.localise import (
        LOCALISATION_STATE,
        LOCALISED_MODEL,
        LocaliseConfig,
        LocaliseState,
        peak_in_box_share,
        stage_summary,
    )
    from training.pipeline import SPLIT_FILE

    _logging()
    runs: list[tuple[LocaliseState, LocaliseConfig] | None] = []
    for path in member:
        # A run folder's record belongs to its localised.keras, not to another file beside it.
        folder = path if path.is_dir() else path.parent
        ours = path.is_dir() or path.name == LOCALISED_MODEL
        record = folder / LOCALISATION_STATE
        runs.append(
            (
                LocaliseState.load(folder),
                LocaliseConfig(**json.loads(record.read_text())["config"]),
            )
            if ours and record.is_file()
            else None
        )
    member_seeds = {config.seed for _, config in filter(None, runs)}
    package = (model / "model.json").is_file()
    if seed is None and package:
        seed = int(read_card(model).training_data.get("seed", 42))
    elif seed is None:
        seed = member_seeds.pop() if len(member_seeds) == 1 else 42
    if any(s != seed for s in member_seeds):  # checked before anything is loaded
        raise typer.BadParameter(
            f"the members were trained on split seed(s) {sorted(member_seeds)}, the base is "
            f"scored on split seed {seed}: validation would hold training pictures"
        )
    loaded = _load_trained_stage(model, data, out, seed=seed, cache_dir=cache_dir)
    val = loaded.prepared.parts[Split.VAL]
    positive = loaded.prepared.dataset.positive_index
    base_stage = read_card(model).training_data.get("localisation_stage") if package else None
    summaries: list[dict[str, Any] | None] = [base_stage if isinstance(base_stage, dict) else None]
    summaries += [None if run is None else stage_summary(*run) for run in runs]
    members = [load_trained(p / LOCALISED_MODEL if p.is_dir() else p) for p in member]
    for index, single in enumerate([loaded.model, *members]):
        share, counted = peak_in_box_share(single, val, positive)
        typer.echo(f"member {index}: validation peak in box {share:.3f} ({counted} pictures)")
    refined, stage = _ensemble(loaded.model, members, loaded.prepared, summaries)
    training = dict(loaded.training)
    training["localisation_stage"] = stage
    if export:
        _export_and_evaluate(
            refined,
            loaded.prepared,
            package_out or out / PACKAGE_DIR,
            data=data,
            split_file=out / SPLIT_FILE,
            crop=loaded.crop,
            name=name or loaded.name,
            version=version,
            training=training,
        )


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The card's short version of an evaluation."""
    return {
        "n_images": metrics["n_images"],
        "n_positive": metrics["n_positive"],
        "auroc": metrics["auroc"],
        "auroc_ci": metrics["auroc_ci"],
        "operating_points": {
            name: {"sensitivity": m["sensitivity"], "specificity": m["specificity"]}
            for name, m in metrics["operating_points"].items()
        },
    }


def evaluate(
    model: Annotated[Path, typer.Option(help="Model package folder or its model.json.")],
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Folder for the report, metrics.json, PNGs.")],
    split: Annotated[str, typer.Option(help="test, val, train, or all.")] = "test",
    seed: Annotated[int | None, typer.Option(help="Split seed (default: the card's).")] = None,
) -> None:
    """Evaluate a model package on a data folder's split (default: the held-out test split)."""
    from inference.model_package import read_card
    from training.datasets import Split, load_dataset, split_examples
    from training.evaluate import evaluate as run_evaluation

    _logging()
    card = read_card(model)
    dataset = load_dataset(data, positive=card.positive_class)
    if split == "all":
        examples = dataset.examples
    else:
        try:
            chosen = Split(split)
        except ValueError:
            raise typer.BadParameter(
                f"split must be test, val, train or all, got {split!r}"
            ) from None
        split_seed = seed if seed is not None else int(card.training_data.get("seed", 42))
        examples = split_examples(dataset, seed=split_seed).part(chosen)
    metrics = run_evaluation(
        model,
        examples,
        dataset.positive_index,
        out,
        data_root=data,
        title=f"{card.name} {card.version} on {data.name} ({split})",
    )
    typer.echo(json.dumps({k: metrics[k] for k in ("n_images", "auroc", "auroc_ci")}))


def export_command(
    model: Annotated[Path, typer.Option(help="Run folder (its best.keras) or a .keras file.")],
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Package folder to write.")],
    seed: Annotated[int, typer.Option(help="The split seed used in training.")] = 42,
    crop: bool = True,
    name: Annotated[
        str | None, typer.Option(help="Package name (default: the model's, e.g. fracture-small).")
    ] = None,
    version: str = "1.0.0",
    positive_class: Annotated[str | None, typer.Option(help="Name of the positive class.")] = None,
    cache_dir: Annotated[Path, typer.Option(help="Pixel cache folder.")] = Path("runs/cache"),
) -> None:
    """Write a model package: calibration and operating points fitted on the validation split."""
    from training.export import export_package, load_trained, model_input_size
    from training.pipeline import prepare_data

    _logging()
    trained = load_trained(model)
    prepared = prepare_data(
        data,
        image_size=model_input_size(trained),
        crop=crop,
        seed=seed,
        cache_dir=cache_dir,
        positive=positive_class,
    )
    card = export_package(
        trained, prepared, out, crop=crop, name=name, version=version, training={"seed": seed}
    )
    typer.echo(f"package written to {out} (sha256 {card.sha256[:12]})")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``evaluate`` and ``export`` to ``app``."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("export")(export_command)
    app.command("localise")(localise)
    app.command("ensemble-maps")(ensemble_maps)

"""Second training stage: the fracture map refined on the boxes, with the classifier frozen.

Stage 1 (:func:`training.fit.train_model`) trains the classifier and the localisation head
together, choosing epochs by validation AUROC. Its map is coarse (1/16 of the input) and
trained with a per-cell loss that does not ask where the map's *peak* falls, which is what a
reader looks at. Stage 2 takes the trained model and:

- keeps every layer the classifier depends on frozen, so the prediction (and with it the
  calibration and the operating points) is unchanged to the last bit;
- gives the localisation head its own copy of the backbone's stages 4 and 5 (initialised with
  the trained weights) on top of the frozen 1/8 stage, and a map at 1/8 of the input
  (:func:`with_localisation_branch`): trained alone on the boxes, a head on the classifier's
  frozen features found a box for under half of the validation pictures;
- trains the branch and the head, on every fractured training picture with boxes and as
  many pictures without a fracture (drawn again each epoch), with :func:`peak_loss`: per-cell
  binary cross-entropy (a negative picture's map is empty) plus, for a picture with boxes, the
  cross-entropy between the map's spatial softmax and its box cells (the peak lies in a box);
- keeps the epoch whose map puts its peak inside an annotated box for the most validation
  pictures (:func:`peak_in_box_share`);
- optionally (``average_epochs``), goes on from that epoch at a constant learning rate and
  averages the head's weights over those epochs (stochastic weight averaging, Izmailov et al.,
  UAI 2018): the validation share moves by several pictures from epoch to epoch, and picking
  the best epoch on 85 validation pictures picks noise along with the map; the average is a
  fixed protocol, chosen by nothing, and can train on the validation pictures too
  (``average_with_validation``) since nothing is chosen on them.

The run folder holds ``localised.keras`` (best so far), ``localised_last.keras``,
``localised_average.keras`` (the running average) and ``localisation.json`` (progress);
re-running the same command resumes after the last finished epoch (the optimizer starts afresh
at the recorded learning rate).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from inference.gradcam import map_focus, resize_map
from training.architectures import (
    GRADCAM_LAYER,
    LOCALISATION_CONTEXT_LAYER,
    LOCALISATION_LAYER,
    localisation_context,
    localisation_map,
)
from training.fit import configure_threads, make_localisation_dataset, model_targets
from training.pipeline import PreparedSplit

log = logging.getLogger(__name__)

#: The refined model with the best validation peak-in-box share.
LOCALISED_MODEL = "localised.keras"
#: The refined model after the last finished epoch.
LOCALISED_LAST = "localised_last.keras"
#: The running average of the head's weights over the averaging epochs.
LOCALISED_AVERAGE = "localised_average.keras"
#: Progress of the second stage.
LOCALISATION_STATE = "localisation.json"
#: Prefix of the localisation branch's copy of the backbone's stages 4 and 5.
BRANCH_PREFIX = "loc_"
#: The first backbone stage (0-based) that the branch copies: 2, the 1/8 stage and the 1/16 ones.
BRANCH_FIRST_STAGE = 2
#: Name of the branch's output, present once a model has the branch.
BRANCH_OUTPUT = "loc_branch_features"
#: Weight of the mean per-cell binary cross-entropy beside the spatial cross-entropy.
CELL_LOSS_WEIGHT = 10.0
#: Halve the learning rate after this many epochs without a better validation share (the
#: validation share moves by a picture or two from epoch to epoch).
PATIENCE = 3


@dataclass(frozen=True, slots=True)
class LocaliseConfig:
    """What decides a second-stage run (recorded in ``localisation.json``)."""

    epochs: int = 12
    batch_size: int = 16
    learning_rate: float = 1e-3
    #: Pictures without a fracture drawn per fractured picture with boxes, each epoch.
    negatives_per_positive: float = 1.0
    augment: bool = True
    #: The split's seed; also the seed of the draws, shuffles and augmentation unless
    #: ``run_seed`` is given.
    seed: int = 42
    #: Seed of the draws, shuffles and augmentation alone (None: ``seed``): runs that differ
    #: only in it train on the same split, e.g. the members of an ensemble of maps.
    run_seed: int | None = None
    threads: int = 2
    #: First backbone stage (0-based) of the localisation branch (:func:`with_localisation_branch`).
    branch_first_stage: int = BRANCH_FIRST_STAGE
    #: Whether the branch also copies the later stages and the head (its own context).
    branch_through_head: bool = False
    #: Halve the learning rate after this many epochs without a better validation share.
    patience: int = PATIENCE
    #: Epochs after the chosen one, at ``average_learning_rate``, whose weights are averaged
    #: into the model returned (0: the chosen epoch's model is returned).
    average_epochs: int = 0
    average_learning_rate: float = 5e-4
    #: Whether the averaging epochs also train on the validation split's pictures.
    average_with_validation: bool = False


@dataclass(slots=True)
class LocaliseState:
    """Progress of a second-stage run, saved after every epoch."""

    epochs_done: int = 0
    best_share: float = -1.0
    best_epoch: int = 0
    learning_rate: float = 0.0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    #: Averaging epochs finished, and the validation share of the average after each.
    averaged_epochs: int = 0
    average_history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path) -> LocaliseState:
        path = folder / LOCALISATION_STATE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        return cls(**{k: v for k, v in data.items() if k != "config"})

    def save(self, folder: Path, config: LocaliseConfig) -> None:
        data = asdict(self) | {"config": asdict(config)}
        tmp = folder / (LOCALISATION_STATE + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(folder / LOCALISATION_STATE)


def with_localisation_branch(
    trained: keras.Model, first_stage: int = BRANCH_FIRST_STAGE, *, through_head: bool = False
) -> keras.Model:
    """``trained`` with a localisation head on its own copy of the backbone's middle stages.

    The classifier's layers are shared, untouched: the prediction output is the same tensor
    as ``trained``'s. The head's 1/8 and 1/16 features come from a copy of the backbone's
    stages ``first_stage`` to 1/16 (0-based; layers named ``loc_block<N>_...``, initialised
    with the trained weights; with ``first_stage`` past the 1/8 stage, the 1/8 features are
    the frozen ones), so they can learn where fractures are without moving what the
    classifier sees. With ``through_head`` the branch also copies the later stages and the
    1280-channel head, so the map's context is its own too (else it is the classifier's). The
    head (:func:`training.architectures.localisation_context` and
    :func:`~training.architectures.localisation_map`) starts from the trained head's weights
    where its layers match. A model that has the branch already is returned as it is.
    """
    names = {layer.name for layer in trained.layers}
    if BRANCH_OUTPUT in names:
        return trained
    if LOCALISATION_CONTEXT_LAYER not in names:
        raise ValueError(f"model {trained.name!r} has no localisation head to refine")
    from training import efficientnet_lite as lite

    variant_name = trained.name.rsplit("_", 1)[-1]
    if variant_name not in lite.VARIANTS:
        raise ValueError(f"model {trained.name!r} is not an EfficientNet-Lite model")
    variant = lite.VARIANTS[variant_name]
    if not 1 <= first_stage <= lite.STRIDE16_STAGE:
        raise ValueError(f"the branch must start at stage 1 to {lite.STRIDE16_STAGE}")
    x = trained.get_layer(lite.stage_output_layer(variant, first_stage - 1)).output
    stride8 = trained.get_layer(lite.stage_output_layer(variant, lite.STRIDE8_STAGE)).output
    blocks = lite.blocks_of(variant)
    stride16 = None
    last_stage = blocks[-1].stage if through_head else lite.STRIDE16_STAGE
    for block in blocks:
        if first_stage <= block.stage <= last_stage:
            x = lite.mbconv(x, block, 0.0, prefix=BRANCH_PREFIX)
            ends_stage = block.index + 1 == len(blocks) or blocks[block.index + 1].stage != (
                block.stage
            )
            if block.stage == lite.STRIDE8_STAGE and ends_stage:
                stride8 = x
            if block.stage == lite.STRIDE16_STAGE and ends_stage:
                stride16 = layers.Identity(name=BRANCH_OUTPUT)(x)
    assert stride16 is not None
    if through_head:
        head = lite.head_block(x, f"{BRANCH_PREFIX}head_relu", prefix=BRANCH_PREFIX)
    else:
        head = trained.get_layer(GRADCAM_LAYER).output
    context = localisation_context(stride16, head)
    refined = keras.Model(
        trained.inputs,
        [trained.outputs[0], localisation_map(context, stride8)],
        name=trained.name,
    )
    shared = {id(layer) for layer in trained.layers}
    for layer in refined.layers:
        if id(layer) in shared or not layer.weights:
            continue
        copied = layer.name.startswith((BRANCH_PREFIX + "block", BRANCH_PREFIX + "head_"))
        source_name = layer.name.removeprefix(BRANCH_PREFIX) if copied else layer.name
        if source_name not in names:
            continue
        source = trained.get_layer(source_name)
        if [w.shape for w in source.weights] == [w.shape for w in layer.weights]:
            layer.set_weights(source.get_weights())
    return refined


def is_head_layer(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` belongs to the localisation head (nothing the classifier uses)."""
    name: str = layer.name
    return name.startswith("loc_") or name == LOCALISATION_LAYER


def peak_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Per picture: weighted mean cell cross-entropy plus the spatial cross-entropy to the boxes.

    ``y_true`` is the box mask on the map's grid (``B x h x w x 1``, 1 in a box cell), ``y_pred``
    the sigmoid map. The spatial term treats the map's logits as a distribution over cells and
    asks it to put its mass on the box cells; pictures without boxes have no spatial term.
    """
    eps = 1e-6
    p = tf.clip_by_value(tf.cast(y_pred, tf.float32), eps, 1.0 - eps)
    y = tf.cast(y_true, tf.float32)
    cells = -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
    cell_loss = tf.reduce_mean(tf.reshape(cells, [tf.shape(p)[0], -1]), axis=1)
    logits = tf.reshape(tf.math.log(p) - tf.math.log(1.0 - p), [tf.shape(p)[0], -1])
    target = tf.reshape(y, [tf.shape(y)[0], -1])
    total = tf.reduce_sum(target, axis=1)
    spread = target / tf.maximum(total, 1.0)[:, tf.newaxis]
    spatial = -tf.reduce_sum(spread * tf.nn.log_softmax(logits, axis=1), axis=1)
    spatial = tf.where(total > 0, spatial, tf.zeros_like(spatial))
    return CELL_LOSS_WEIGHT * cell_loss + spatial


def peak_in_box_share(
    model: keras.Model, part: PreparedSplit, positive_index: int, batch_size: int = 16
) -> tuple[float, int]:
    """Share of ``part``'s fractured pictures with boxes whose map peak lies inside a box.

    The peak is taken as the service takes it (:mod:`inference.predictor`): the map resized to
    the model input, its focus (:func:`inference.gradcam.map_focus`) inside the picture's
    content (not the letterbox padding).
    Returns ``(share, pictures counted)``.
    """
    if part.masks is None or part.has_boxes is None:
        return float("nan"), 0
    chosen = np.flatnonzero((part.labels == positive_index) & part.has_boxes)
    if chosen.size == 0:
        return float("nan"), 0
    size = int(part.images.shape[1])
    hits = 0
    for start in range(0, chosen.size, batch_size):
        rows = chosen[start : start + batch_size]
        x = (part.images[rows].astype(np.float32) / 255.0)[..., np.newaxis]
        maps = np.asarray(model(x, training=False)[1])[..., 0]
        for row, coarse in zip(rows, maps, strict=True):
            heat = resize_map(coarse, size)
            box = part.transform(int(row)).content_box()
            content = heat[box.y0 : box.y1, box.x0 : box.x1]
            x_, y = map_focus(content)
            cell_y = min(int(y) + box.y0, size - 1)
            cell_x = min(int(x_) + box.x0, size - 1)
            hits += int(part.masks[row][cell_y, cell_x] > 0)
    return hits / chosen.size, int(chosen.size)


class _FrozenDropout:
    """Sets the frozen layers' dropout to 0 while the head trains, and restores it after.

    The head must learn from the features the service computes; a frozen backbone's stochastic
    depth would otherwise still drop residual branches in training mode.
    """

    def __init__(self, model: keras.Model) -> None:
        self._saved = [
            (layer, float(layer.rate))
            for layer in model.layers
            if isinstance(layer, layers.Dropout) and not is_head_layer(layer)
        ]

    def __enter__(self) -> None:
        for layer, _ in self._saved:
            layer.rate = 0.0

    def __exit__(self, *exc: object) -> None:
        for layer, rate in self._saved:
            layer.rate = rate


def _save_atomically(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    tmp.replace(path)


def refine_localisation(
    trained: keras.Model,
    train: PreparedSplit,
    val: PreparedSplit,
    positive_index: int,
    folder: Path,
    config: LocaliseConfig,
) -> tuple[keras.Model, LocaliseState]:
    """Run (or resume) the second stage into ``folder``; returns the best refined model."""
    if train.masks is None or train.has_boxes is None:
        raise ValueError("the training data has no fracture boxes to refine the map on")
    folder.mkdir(parents=True, exist_ok=True)
    configure_threads(config.threads)
    state = LocaliseState.load(folder)
    if (state.epochs_done or state.averaged_epochs) and (folder / LOCALISED_LAST).is_file():
        log.info("resuming the localisation stage after epoch %d", state.epochs_done)
        model = keras.models.load_model(folder / LOCALISED_LAST, compile=False)
    else:
        state = LocaliseState(learning_rate=config.learning_rate)
        model = with_localisation_branch(
            trained, config.branch_first_stage, through_head=config.branch_through_head
        )
    head = _trainable_head(model)
    map_size = int(model.outputs[1].shape[1])
    log.info(
        "localisation stage: %d fractured pictures with boxes, %d without a fracture, %d x %d map",
        int(np.count_nonzero((train.labels == positive_index) & train.has_boxes)),
        int(np.count_nonzero(train.labels != positive_index)),
        map_size,
        map_size,
    )
    while state.epochs_done < config.epochs:
        epoch = state.epochs_done
        started = time.monotonic()
        loss = _train_epoch(head, model, train, positive_index, epoch, state.learning_rate, config)
        share, counted = peak_in_box_share(model, val, positive_index)
        state.seconds += time.monotonic() - started
        state.epochs_done = epoch + 1
        state.history.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "val_peak_in_box": share,
                "learning_rate": state.learning_rate,
            }
        )
        log.info(
            "localisation epoch %d: loss %.4f, validation peak in box %.3f (%d pictures)",
            epoch + 1,
            loss,
            share,
            counted,
        )
        if share > state.best_share:
            state.best_share, state.best_epoch = share, epoch + 1
            _save_atomically(model, folder / LOCALISED_MODEL)
        elif (epoch + 1 - state.best_epoch) % config.patience == 0:
            state.learning_rate /= 2
        _save_atomically(model, folder / LOCALISED_LAST)
        state.save(folder, config)
    if not (folder / LOCALISED_MODEL).is_file():  # no selection epochs: start from the input
        _save_atomically(model, folder / LOCALISED_MODEL)
    best: keras.Model = keras.models.load_model(folder / LOCALISED_MODEL, compile=False)
    if config.average_epochs:
        best = _average(best, train, val, positive_index, folder, config, state)
    return best, state


def _trainable_head(model: keras.Model) -> keras.Model:
    """The model's map output with only the localisation head's layers trainable."""
    for layer in model.layers:
        layer.trainable = is_head_layer(layer)
    return keras.Model(model.inputs, model.outputs[1], name="localisation_head")


def _train_epoch(
    head: keras.Model,
    model: keras.Model,
    train: PreparedSplit,
    positive_index: int,
    epoch: int,
    learning_rate: float,
    config: LocaliseConfig,
) -> float:
    """One epoch on the fractured pictures with boxes and as many normal ones drawn afresh."""
    if train.masks is None or train.has_boxes is None:
        raise ValueError("the training data has no fracture boxes to refine the map on")
    seed = (config.seed if config.run_seed is None else config.run_seed) + epoch
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    positive = train.labels == positive_index
    with_boxes = np.flatnonzero(positive & train.has_boxes)
    negatives = np.flatnonzero(~positive)
    drawn = min(negatives.size, round(config.negatives_per_positive * with_boxes.size))
    rows = np.sort(np.concatenate([with_boxes, rng.choice(negatives, drawn, replace=False)]))
    data = make_localisation_dataset(
        train.images[rows],
        model_targets(train.labels[rows], 2, positive_index),
        train.masks[rows],
        np.ones(rows.size, np.float32),
        map_size=int(model.outputs[1].shape[1]),
        batch_size=config.batch_size,
        shuffle_seed=seed,
        augment_seed=seed if config.augment else None,
    ).map(lambda x, y, w: (x, y[1]))
    head.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=1e-4),
        loss=peak_loss,
    )
    with _FrozenDropout(model):
        result = head.fit(data, epochs=1, shuffle=False, verbose=1 if sys.stdout.isatty() else 2)
    return float(result.history["loss"][-1])


def head_weights(model: keras.Model) -> list[np.ndarray]:
    """The localisation head's weights (batch-norm statistics included), in layer order."""
    return [w for layer in model.layers if is_head_layer(layer) for w in layer.get_weights()]


def set_head_weights(model: keras.Model, weights: list[np.ndarray]) -> None:
    """Set what :func:`head_weights` returned; the classifier's layers are not touched."""
    position = 0
    for layer in model.layers:
        if is_head_layer(layer):
            count = len(layer.get_weights())
            layer.set_weights(weights[position : position + count])
            position += count
    if position != len(weights):
        raise ValueError(f"{len(weights)} weights given for a head of {position}")


def combine(first: PreparedSplit, second: PreparedSplit) -> PreparedSplit:
    """One split of both splits' pictures (for training on train and validation together)."""

    def joined(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        return None if a is None or b is None else np.concatenate([a, b])

    return PreparedSplit(
        examples=first.examples + second.examples,
        images=np.concatenate([first.images, second.images]),
        labels=np.concatenate([first.labels, second.labels]),
        masks=joined(first.masks, second.masks),
        has_boxes=joined(first.has_boxes, second.has_boxes),
        geometry=joined(first.geometry, second.geometry),
    )


def _average(
    chosen: keras.Model,
    train: PreparedSplit,
    val: PreparedSplit,
    positive_index: int,
    folder: Path,
    config: LocaliseConfig,
    state: LocaliseState,
) -> keras.Model:
    """Go on from ``chosen`` for ``config.average_epochs`` and return the averaged model.

    After each epoch the head's weights join a running mean (batch-norm statistics too: the
    epochs' statistics are close, and their mean is what the averaged weights see on the
    same data); the model returned carries the mean. Resumes like the selection epochs.
    """
    if state.averaged_epochs and (folder / LOCALISED_AVERAGE).is_file():
        model = keras.models.load_model(folder / LOCALISED_LAST, compile=False)
        mean = head_weights(keras.models.load_model(folder / LOCALISED_AVERAGE, compile=False))
        log.info("resuming the averaging after %d epochs", state.averaged_epochs)
    else:
        model, mean = chosen, []
        state.averaged_epochs, state.average_history = 0, []
    data = combine(train, val) if config.average_with_validation else train
    head = _trainable_head(model)
    while state.averaged_epochs < config.average_epochs:
        done = state.averaged_epochs
        started = time.monotonic()
        epoch = config.epochs + done
        loss = _train_epoch(
            head, model, data, positive_index, epoch, config.average_learning_rate, config
        )
        current = head_weights(model)
        mean = (
            current
            if not mean
            else [m + (w - m) / (done + 1) for m, w in zip(mean, current, strict=True)]
        )
        last_share, _ = peak_in_box_share(model, val, positive_index)
        set_head_weights(model, mean)
        share, counted = peak_in_box_share(model, val, positive_index)
        _save_atomically(model, folder / LOCALISED_AVERAGE)
        set_head_weights(model, current)
        state.seconds += time.monotonic() - started
        state.averaged_epochs = done + 1
        state.average_history.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "val_peak_in_box_last": last_share,
                "val_peak_in_box_average": share,
            }
        )
        log.info(
            "averaging epoch %d of %d: loss %.4f, validation peak in box %.3f (this epoch) "
            "%.3f (average of %d epochs; %d pictures%s)",
            done + 1,
            config.average_epochs,
            loss,
            last_share,
            share,
            done + 1,
            counted,
            ", seen in training" if config.average_with_validation else "",
        )
        _save_atomically(model, folder / LOCALISED_LAST)
        state.save(folder, config)
    result: keras.Model = keras.models.load_model(folder / LOCALISED_AVERAGE, compile=False)
    return result


def stage_summary(state: LocaliseState, config: LocaliseConfig) -> dict[str, Any]:
    """What the card records of the second stage."""
    return {
        "epochs": state.epochs_done,
        "best_epoch": state.best_epoch,
        "best_val_peak_in_box": round(state.best_share, 4),
        "minutes": round(state.seconds / 60, 1),
        "negatives_per_positive": config.negatives_per_positive,
        "learning_rate": config.learning_rate,
        "batch_size": config.batch_size,
        "run_seed": config.run_seed,
        "branch_first_stage": config.branch_first_stage,
        "branch_through_head": config.branch_through_head,
        "patience": config.patience,
        "average_epochs": config.average_epochs,
        "average_learning_rate": config.average_learning_rate,
        "average_with_validation": config.average_with_validation,
        "average_val_peak_in_box": (
            round(state.average_history[-1]["val_peak_in_box_average"], 4)
            if state.average_history
            else None
        ),
    }


def member_run_seeds(config: LocaliseConfig, members: int) -> list[int | None]:
    """The run seed of each member of an ensemble of ``members`` maps.

    Member 0 keeps ``config.run_seed`` (None: the split seed); the others take 1, 2, ...,
    skipping member 0's own seed so that no member repeats it. An epoch's seed is the run seed
    plus the epoch, so members i and i + 1 meet the same draws one epoch apart, at another
    state of training; no two members draw alike in the same epoch.
    """
    own = config.seed if config.run_seed is None else config.run_seed
    seeds: list[int | None] = [config.run_seed]
    candidate = 1
    while len(seeds) < members:
        if candidate != own:
            seeds.append(candidate)
        candidate += 1
    return seeds


#: Name of the ensemble's members in :func:`ensemble_maps`: ``loc_member_<i>``.
MEMBER_PREFIX = BRANCH_PREFIX + "member_"


def branch_first_stage(model: keras.Model) -> int:
    """The first backbone stage (0-based) that ``model``'s localisation branch copies."""
    from training import efficientnet_lite as lite

    variant = lite.VARIANTS[model.name.rsplit("_", 1)[-1]]
    stage_of = {block.index: block.stage for block in lite.blocks_of(variant)}
    prefix = BRANCH_PREFIX + "block"
    indices = [
        int(name[len(prefix) :].split("_", 1)[0])
        for name in (layer.name for layer in model.layers)
        if name.startswith(prefix)
    ]
    if not indices:
        raise ValueError(f"model {model.name!r} has no localisation branch (stage 2)")
    return stage_of[min(indices)]


def _frozen_inputs(model: keras.Model, first_stage: int) -> list[keras.KerasTensor]:
    """What a branch from ``first_stage`` reads: the stage before it and the 1280-channel head."""
    from training import efficientnet_lite as lite

    variant = lite.VARIANTS[model.name.rsplit("_", 1)[-1]]
    start = model.get_layer(lite.stage_output_layer(variant, first_stage - 1)).output
    return [start, model.get_layer(GRADCAM_LAYER).output]


def _member_map(model: keras.Model, first_stage: int, name: str) -> keras.Model:
    """``model``'s localisation branch and head as one model from the frozen features it reads."""
    return keras.Model(_frozen_inputs(model, first_stage), model.outputs[1], name=name)


def ensemble_maps(base: keras.Model, members: list[keras.Model]) -> keras.Model:
    """``base`` with its map replaced by the mean of its own and the ``members``' maps.

    Each member is a stage-2 model of the same classifier (trained with another ``run_seed``):
    the classifier's weights must be those of ``base`` to the last bit, so the prediction and
    with it the calibration are unchanged; only the map's branches and heads differ. A map
    trained once moves by several validation pictures from epoch to epoch; the mean of maps
    trained with different draws, orders and augmentations keeps what they agree on. Each
    branch becomes a nested model ``loc_member_<i>`` (plain Keras layers: the saved model
    loads without custom code) and the mean is the output layer
    :data:`~training.architectures.LOCALISATION_LAYER`.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member beside the base")
    frozen = [layer for layer in base.layers if not is_head_layer(layer) and layer.weights]
    for member in [base, *members]:
        names = {layer.name for layer in member.layers}
        if any(name.startswith(MEMBER_PREFIX) for name in names):
            raise ValueError(f"model {member.name!r} is an ensemble already: give its members")
        if BRANCH_OUTPUT not in names:
            raise ValueError(f"model {member.name!r} has no localisation branch (stage 2)")
    from training import efficientnet_lite as lite

    first_stage = branch_first_stage(base)
    if not 1 <= first_stage <= lite.STRIDE8_STAGE:
        raise ValueError("an ensemble needs branches that copy the 1/8 stage (first stage <= 2)")
    for member in members:
        if branch_first_stage(member) != first_stage:
            raise ValueError(f"member {member.name!r} has a branch from another stage")
    for member in members:
        for layer in frozen:
            theirs = member.get_layer(layer.name).get_weights()
            ours = layer.get_weights()
            if len(theirs) != len(ours) or not all(
                np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)
            ):
                raise ValueError(
                    f"member {member.name!r} has another classifier (layer {layer.name!r} "
                    "differs): its map was not trained on this model"
                )
    inputs = _frozen_inputs(base, first_stage)
    maps = [
        _member_map(model, first_stage, f"{MEMBER_PREFIX}{index}")(inputs)
        for index, model in enumerate([base, *members])
    ]
    mean = layers.Average(name=LOCALISATION_LAYER, dtype="float32")(maps)
    return keras.Model(base.inputs, [base.outputs[0], mean], name=base.name)

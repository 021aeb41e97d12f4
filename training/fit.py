"""The training loop: cached arrays -> tf.data with augmentation -> Keras ``fit``, resumable.

A run folder holds ``last.keras`` (model and optimizer, every epoch), ``best.keras`` (best
validation AUROC so far), ``state.json`` (epochs done, best AUROC, training seconds used) and
``history.csv``. Re-running the same command resumes from ``last.keras``; a run that has
finished (early stop, all epochs, or time budget spent) is not trained again, unless it is
given more epochs or a larger time budget than it has used.
"""

from __future__ import annotations

import enum
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
from numpy.typing import NDArray

from training.architectures import build_model
from training.metrics import auroc
from training.names import Architecture

log = logging.getLogger(__name__)

LAST_MODEL = "last.keras"
BEST_MODEL = "best.keras"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"


class StopReason(enum.StrEnum):
    """Why a run stopped."""

    EARLY_STOPPING = "early stopping on validation AUROC"
    TIME_BUDGET = "time budget spent"
    ALL_EPOCHS = "all epochs done"


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything that decides what a training run does (recorded in the run folder)."""

    arch: Architecture = Architecture.SMALL
    weights: str | None = None
    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 1e-3
    image_size: int = 320
    crop: bool = True
    seed: int = 42
    augment: bool = True
    class_weights: bool = True
    time_budget_minutes: float | None = None
    early_stopping_patience: int = 12
    threads: int = 2
    #: EfficientNet-Lite: the stem and this many leading MBConv blocks keep their ImageNet
    #: weights (frozen, batch norm in inference mode). Their backward pass dominates the cost
    #: on a CPU: freezing the first three stages (5 blocks) trains 3x faster (PERFORMANCE.md).
    freeze_blocks: int = 0


@dataclass(slots=True)
class RunState:
    """Progress of a run, saved after every epoch."""

    epochs_done: int = 0
    best_auroc: float = -1.0
    best_epoch: int = -1
    train_seconds: float = 0.0
    finished: bool = False
    stop_reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path) -> RunState:
        path = folder / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def save(self, folder: Path) -> None:
        tmp = folder / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(folder / STATE_FILE)


def may_continue(state: RunState, config: TrainConfig) -> bool:
    """Whether a finished run has been given room to go on (more epochs or a larger budget)."""
    if state.epochs_done >= config.epochs or state.stop_reason == StopReason.EARLY_STOPPING:
        return False
    if state.stop_reason == StopReason.TIME_BUDGET:
        budget = config.time_budget_minutes
        last_epoch = state.history[-1]["seconds"] if state.history else 0.0
        return budget is None or state.train_seconds + last_epoch <= budget * 60
    return True


def configure_threads(threads: int) -> None:
    """Use ``threads`` cores for TensorFlow's operators (call before building any model)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads // 2))
    except RuntimeError:
        log.debug("TensorFlow threads already configured")


def freeze_leading_blocks(model: keras.Model, blocks: int) -> int:
    """Freeze the stem and the first ``blocks`` MBConv blocks of an EfficientNet-Lite model.

    Returns the number of layers frozen; raises ``ValueError`` for a model without them.
    """
    prefixes = ("stem_", *(f"block{i}_" for i in range(blocks)))
    frozen = 0
    for layer in model.layers:
        if layer.name.startswith(prefixes):
            layer.trainable = False
            frozen += 1
    if not frozen:
        raise ValueError(f"model {model.name!r} has no EfficientNet-Lite stem or blocks to freeze")
    return frozen


def balanced_class_weights(labels: NDArray[np.int64], n_classes: int) -> dict[int, float]:
    """``n / (k * n_c)`` per class: each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    total = counts.sum()
    return {c: float(total / (n_classes * n)) if n > 0 else 0.0 for c, n in enumerate(counts)}


def _geometric_layers(seed: int) -> list[keras.layers.Layer]:
    return [
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed + 1),
        layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
        layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 3),
    ]


def _photometric_layers(seed: int) -> list[keras.layers.Layer]:
    return [
        layers.RandomContrast(0.2, value_range=(0.0, 1.0), seed=seed + 4),
        layers.RandomBrightness(0.1, value_range=(0.0, 1.0), seed=seed + 5),
    ]


def augmenter(seed: int) -> keras.Sequential:
    """Flip, small rotation, zoom and shift, contrast and brightness, on ``[0, 1]`` images."""
    return keras.Sequential([*_geometric_layers(seed), *_photometric_layers(seed)], name="augment")


#: Weight of the localisation loss (mean binary cross-entropy over the map's cells) beside the
#: classification loss: positive cells are few, so the mean is small and needs the weight.
LOCALISATION_LOSS_WEIGHT = 4.0


def paired_augmenters(seed: int) -> tuple[keras.Sequential, keras.Sequential]:
    """The same augmentation split in two: geometric (image and box mask together) and
    photometric (image only), so the mask follows every flip, turn, zoom and shift."""
    return (
        keras.Sequential(_geometric_layers(seed), name="augment_geometric"),
        keras.Sequential(_photometric_layers(seed), name="augment_photometric"),
    )


def make_localisation_dataset(
    images: NDArray[np.uint8],
    targets: NDArray[np.int64],
    masks: NDArray[np.uint8],
    mask_weights: NDArray[np.float32],
    *,
    map_size: int,
    batch_size: int,
    shuffle_seed: int | None,
    augment_seed: int | None,
    weights: NDArray[np.float32] | None = None,
) -> tf.data.Dataset:
    """Batches of ``(image, (label, map), (weights))`` for a ``[prediction, localisation]`` model.

    The box mask is augmented with its image, then reduced to the localisation map's grid by
    max pooling (a cell is positive when any of its pixels lies in a box).
    """
    size = images.shape[1]
    if size % map_size:
        raise ValueError(f"input size {size} is not a multiple of the map size {map_size}")
    factor = size // map_size
    pixels = tf.constant(np.ascontiguousarray(images))
    box_masks = tf.constant(np.ascontiguousarray(masks))
    labels = tf.constant(targets)
    class_weights = tf.constant(
        np.ones(len(targets), np.float32) if weights is None else weights.astype(np.float32)
    )
    loc_weights = tf.constant(mask_weights.astype(np.float32))
    augment = None if augment_seed is None else paired_augmenters(augment_seed)
    indices = tf.data.Dataset.range(len(targets))
    if shuffle_seed is not None:
        indices = indices.shuffle(len(targets), seed=shuffle_seed, reshuffle_each_iteration=True)

    def load(idx: tf.Tensor) -> tuple[tf.Tensor, ...]:
        x = tf.cast(tf.gather(pixels, idx), tf.float32)[..., tf.newaxis] / 255.0
        m = tf.cast(tf.gather(box_masks, idx), tf.float32)[..., tf.newaxis]
        if augment is not None:
            geometric, photometric = augment
            both = geometric(tf.concat([x, m], axis=-1), training=True)
            x, m = both[..., :1], both[..., 1:]
            x = tf.clip_by_value(photometric(x, training=True), 0.0, 1.0)
        cells = tf.nn.max_pool2d(m, ksize=factor, strides=factor, padding="VALID")
        cells = tf.cast(cells > 0.5, tf.float32)
        w = tf.gather(class_weights, idx)
        # In the order of the model's outputs: [prediction, localisation].
        y = (tf.gather(labels, idx), cells)
        # The map's loss is per cell (B x h x w): its weight broadcasts over the cells.
        sw = (w, (w * tf.gather(loc_weights, idx))[:, tf.newaxis, tf.newaxis])
        return x, y, sw

    batches = indices.batch(batch_size)
    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_dataset(
    images: NDArray[np.uint8],
    targets: NDArray[np.int64],
    *,
    batch_size: int,
    shuffle_seed: int | None,
    augment: keras.Sequential | None,
    weights: NDArray[np.float32] | None = None,
) -> tf.data.Dataset:
    """Batches of ``(float image in [0, 1], target[, sample weight])`` from a uint8 array."""
    pixels = tf.constant(np.ascontiguousarray(images))
    labels = tf.constant(targets)
    sample_weights = None if weights is None else tf.constant(weights)
    indices = tf.data.Dataset.range(len(targets))
    if shuffle_seed is not None:
        indices = indices.shuffle(len(targets), seed=shuffle_seed, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size)

    def load(idx: tf.Tensor) -> tuple[tf.Tensor, ...]:
        x = tf.cast(tf.gather(pixels, idx), tf.float32)[..., tf.newaxis] / 255.0
        if augment is not None:
            x = tf.clip_by_value(augment(x, training=True), 0.0, 1.0)
        y = tf.gather(labels, idx)
        if sample_weights is None:
            return x, y
        return x, y, tf.gather(sample_weights, idx)

    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def positive_scores(outputs: Any, positive_index: int) -> NDArray[np.float32]:
    """The positive class's score from a sigmoid (N x 1) or softmax (N x K) output.

    A model with a localisation output returns ``[prediction, localisation]`` (or a dict):
    the prediction is used.
    """
    if isinstance(outputs, dict):
        outputs = outputs["prediction"]
    elif isinstance(outputs, list | tuple):
        outputs = outputs[0]
    array: NDArray[np.float32] = np.asarray(outputs, dtype=np.float32)
    if array.ndim == 1:
        return array
    column = 0 if array.shape[1] == 1 else positive_index
    scores: NDArray[np.float32] = array[:, column]
    return scores


def model_targets(
    labels: NDArray[np.int64], n_classes: int, positive_index: int
) -> NDArray[np.int64]:
    """Targets as the model's loss wants them: 0/1 for positive for a binary model."""
    if n_classes == 2:
        binary: NDArray[np.int64] = (labels == positive_index).astype(np.int64)
        return binary
    return labels


def _save_atomically(model: keras.Model, path: Path) -> None:
    """Save to a temporary file and rename, so a killed run never leaves a half-written model."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)


class _RunMonitor(keras.callbacks.Callback):  # type: ignore[misc]
    """Validation AUROC, best/last checkpoints, run state, early stopping and the time budget."""

    def __init__(
        self,
        folder: Path,
        state: RunState,
        val_images: NDArray[np.float32],
        val_positive: NDArray[np.int64],
        positive_index: int,
        config: TrainConfig,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.state = state
        self.val_images = val_images
        self.val_positive = val_positive
        self.positive_index = positive_index
        self.config = config
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        outputs = self.model.predict(self.val_images, batch_size=64, verbose=0)
        value = auroc(self.val_positive, positive_scores(outputs, self.positive_index))
        logs["val_auroc"] = value
        seconds = time.monotonic() - self._epoch_start
        state = self.state
        state.epochs_done = epoch + 1
        state.train_seconds += seconds
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        state.history.append(
            {"epoch": epoch + 1, "seconds": round(seconds, 1), "lr": lr}
            | {k: float(v) for k, v in logs.items()}
        )
        if value > state.best_auroc:
            state.best_auroc, state.best_epoch = value, epoch + 1
            _save_atomically(self.model, self.folder / BEST_MODEL)
        _save_atomically(self.model, self.folder / LAST_MODEL)
        print(
            f"epoch {epoch + 1}: val_auroc {value:.4f} (best {state.best_auroc:.4f} at "
            f"{state.best_epoch}), {seconds:.0f} s, {state.train_seconds / 60:.1f} min used",
            flush=True,
        )
        if epoch + 1 - state.best_epoch >= self.config.early_stopping_patience:
            state.finished, state.stop_reason = True, StopReason.EARLY_STOPPING
        budget = self.config.time_budget_minutes
        if budget is not None and state.train_seconds + seconds > budget * 60:
            state.finished, state.stop_reason = True, StopReason.TIME_BUDGET
        if epoch + 1 >= self.config.epochs:
            state.finished, state.stop_reason = True, StopReason.ALL_EPOCHS
        state.save(self.folder)
        if state.finished:
            self.model.stop_training = True


def train_model(
    config: TrainConfig,
    *,
    train_images: NDArray[np.uint8],
    train_labels: NDArray[np.int64],
    val_images: NDArray[np.uint8],
    val_labels: NDArray[np.int64],
    class_names: tuple[str, ...],
    positive_index: int,
    folder: Path,
    train_masks: NDArray[np.uint8] | None = None,
    train_has_boxes: NDArray[np.bool_] | None = None,
) -> RunState:
    """Train (or resume) into ``folder``; returns the run state. ``best.keras`` is the result.

    A model with a localisation output is trained on the box masks beside the labels: every
    negative picture's map should be empty, every positive picture's map should mark its
    boxes; positive pictures without boxes do not count in the localisation loss.
    """
    folder.mkdir(parents=True, exist_ok=True)
    configure_threads(config.threads)
    state = RunState.load(folder)
    if state.finished and (folder / BEST_MODEL).is_file():
        if not may_continue(state, config):
            log.info("run in %s already finished (%s)", folder, state.stop_reason)
            return state
        log.info("continuing run in %s (%s before)", folder, state.stop_reason)
        state.finished, state.stop_reason = False, ""
    n_classes = len(class_names)
    keras.utils.set_random_seed(config.seed + state.epochs_done)
    if (folder / LAST_MODEL).is_file() and state.epochs_done > 0:
        log.info("resuming from epoch %d", state.epochs_done)
        model = keras.models.load_model(folder / LAST_MODEL)
    else:
        state = RunState()
        model = build_model(config.arch, config.image_size, n_classes, weights=config.weights)
        if config.freeze_blocks:
            freeze_leading_blocks(model, config.freeze_blocks)
        loss = "binary_crossentropy" if n_classes == 2 else "sparse_categorical_crossentropy"
        optimizer = keras.optimizers.AdamW(config.learning_rate, weight_decay=1e-4)
        if len(model.outputs) == 2:
            model.compile(
                optimizer=optimizer,
                loss={"prediction": loss, "localisation": "binary_crossentropy"},
                loss_weights={"prediction": 1.0, "localisation": LOCALISATION_LOSS_WEIGHT},
                metrics={"prediction": ["accuracy"]},
            )
        else:
            model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    targets = model_targets(train_labels, n_classes, positive_index)
    sample_weights = None
    if config.class_weights:
        per_class = balanced_class_weights(train_labels, n_classes)
        sample_weights = np.array([per_class[int(c)] for c in train_labels], dtype=np.float32)
    if len(model.outputs) == 2:
        map_size = int(model.outputs[1].shape[1])
        if train_masks is None:
            log.warning("no fracture boxes in the data: the localisation head is not trained")
            train_masks = np.zeros(train_images.shape, dtype=np.uint8)
            train_has_boxes = np.zeros(len(train_labels), dtype=bool)
        assert train_has_boxes is not None
        positive = train_labels == positive_index
        # Negatives teach an empty map; positives teach their boxes, when they have any.
        mask_weights = np.where(~positive | train_has_boxes, 1.0, 0.0).astype(np.float32)
        train_data = make_localisation_dataset(
            train_images,
            targets,
            train_masks,
            mask_weights,
            map_size=map_size,
            batch_size=config.batch_size,
            shuffle_seed=config.seed + state.epochs_done,
            augment_seed=config.seed if config.augment else None,
            weights=sample_weights,
        )
    else:
        train_data = make_dataset(
            train_images,
            targets,
            batch_size=config.batch_size,
            shuffle_seed=config.seed + state.epochs_done,
            augment=augmenter(config.seed) if config.augment else None,
            weights=sample_weights,
        )
    val_float = (np.asarray(val_images, dtype=np.float32) / 255.0)[..., np.newaxis]
    val_positive = (val_labels == positive_index).astype(np.int64)
    monitor = _RunMonitor(folder, state, val_float, val_positive, positive_index, config)
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_auroc", mode="max", factor=0.5, patience=4, min_lr=1e-5, verbose=1
    )
    (folder / "config.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
    model.fit(
        train_data,
        epochs=config.epochs,
        initial_epoch=state.epochs_done,
        callbacks=[monitor, plateau, keras.callbacks.CSVLogger(folder / HISTORY_FILE, append=True)],
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=1 if sys.stdout.isatty() else 2,
    )
    if not state.finished:
        state.finished, state.stop_reason = True, StopReason.ALL_EPOCHS
        state.save(folder)
    return state

"""Training cost of EfficientNet-Lite (with the localisation head) at several input sizes.

Times ``train_on_batch`` (forward, backward, AdamW update; no input pipeline) on random
pictures after warm-up steps, and prints seconds per picture and the estimated minutes per
FracAtlas epoch (2434 training pictures) for each size. Run by hand; see docs/PERFORMANCE.md.

    .venv/bin/python bench/bench_train_resolution.py --sizes 320 384 448 512
"""

from __future__ import annotations

import argparse
import platform
import time

import keras
import numpy as np

from training.architectures import build_model
from training.fit import LOCALISATION_LOSS_WEIGHT, configure_threads
from training.names import Architecture

TRAIN_PICTURES = 2434  # FracAtlas training split at seed 42


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 384, 448, 512])
    parser.add_argument("--arch", default=Architecture.EFFICIENTNET_LITE0.value)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    configure_threads(2)
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {args.arch}, batch {args.batch_size}")
    rng = np.random.default_rng(0)
    print("size  map   s/picture  min/epoch (2434 pictures)")
    for size in args.sizes:
        model = build_model(Architecture(args.arch), size, 2, weights=None)
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-4),
            loss={"prediction": "binary_crossentropy", "localisation": "binary_crossentropy"},
            loss_weights={"prediction": 1.0, "localisation": LOCALISATION_LOSS_WEIGHT},
        )
        cells = int(model.outputs[1].shape[1])
        x = rng.random((args.batch_size, size, size, 1), dtype=np.float32)
        y = (
            rng.integers(0, 2, (args.batch_size, 1)).astype(np.float32),
            rng.integers(0, 2, (args.batch_size, cells, cells, 1)).astype(np.float32),
        )
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        start = time.perf_counter()
        for _ in range(args.steps):
            model.train_on_batch(x, y)
        per_picture = (time.perf_counter() - start) / (args.steps * args.batch_size)
        minutes = per_picture * TRAIN_PICTURES / 60
        print(f"{size:4d}  {cells:3d}  {per_picture:9.4f}  {minutes:8.1f}", flush=True)


if __name__ == "__main__":
    main()

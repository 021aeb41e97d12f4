"""Bare model throughput of two saved models, alternating rounds in one run (run by hand).

Compares ``predict_on_batch`` images per second of model files (for example the bundled
model before and after a change of its localisation head) at batch 1 and 16 on random
inputs of the model's size, in alternating rounds so that a busy machine slows both alike;
prints the median per model and the ratio to the first.

    .venv/bin/python bench/bench_model_versions.py OLD.keras NEW.keras --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import keras
import numpy as np


def images_per_second(model: keras.Model, x: np.ndarray, seconds: float) -> float:
    """How many images per second ``model`` predicts on batches like ``x``."""
    model.predict_on_batch(x)  # warm-up (tracing)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict_on_batch(x)
        done += len(x)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    models = [keras.models.load_model(p, compile=False, safe_mode=True) for p in args.models]
    size = int(models[0].input_shape[1])
    rng = np.random.default_rng(0)
    print("| model | batch | images/s (median) | ratio to the first |")
    print("|---|---|---|---|")
    for batch in (1, 16):
        x = rng.random((batch, size, size, 1), dtype=np.float32)
        rates: list[list[float]] = [[] for _ in models]
        for _ in range(args.rounds):
            for i, model in enumerate(models):
                rates[i].append(images_per_second(model, x, args.seconds))
        medians = [statistics.median(r) for r in rates]
        for path, median in zip(args.models, medians, strict=True):
            print(f"| {path.name} | {batch} | {median:.1f} | {median / medians[0]:.2f}x |")


if __name__ == "__main__":
    main()

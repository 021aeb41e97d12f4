"""Inference throughput: the full per-image path against the bare model (run by hand).

For uncompressed and JPEG 2000 radiographs (WG04 RG samples in the shared material), measures
images per second for

* ``full``: read the DICOM file, decode, grey chain, preprocess, predict, the map (the
  localisation output, or Grad-CAM for a model without one), the regions and the map's peak
  on the original image: what the analysis step does per image;
* ``predictor``: prediction with the map and regions on already prepared tensors;
* ``bare``: ``model.predict_on_batch`` on the same prepared tensors;

at batch sizes 1 and 16, for each ``--package`` given, with the ratio full / bare. Prints a
Markdown table.

    .venv/bin/python bench/bench_inference.py --package models/fracture-lite0 \
        --package models/fracture-small
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import tensorflow as tf

from inference.model_package import ModelPackage, load_package
from inference.pixels import to_model_input
from inference.predictor import Predictor

REPO_ROOT = Path(__file__).resolve().parent.parent
WG04 = Path("dicom/robyoung-dicom-test-files/data/WG04")
INPUTS = {
    "uncompressed": [WG04 / "REF/RG2_UNC", WG04 / "REF/RG3_UNC"],
    "JPEG 2000": [
        WG04 / "J2KR/RG2_J2KR",
        WG04 / "J2KI/RG2_J2KI",
        Path("dicom/pydicom-data/data_store/data/RG3_J2KR.dcm"),
    ],
}


def rate(work: Callable[[], int], seconds: float) -> float:
    """Images per second of ``work`` (returns images done per call), after one warm-up call."""
    work()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += work()
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, action="append", help="repeat to compare")
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("FRACTURE_GATEWAY_SHARED", REPO_ROOT.parent / "shared")),
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} TF threads, TensorFlow {tf.__version__}\n"
    )
    print("| model | input | path | batch | images/s | full / bare |")
    print("|---|---|---|---|---|---|")
    for path in args.package or [REPO_ROOT / "models" / "fracture-lite0"]:
        measure(load_package(path), args.shared, args.seconds)


def measure(package: ModelPackage, shared: Path, seconds: float) -> None:
    """One model's rows of the table."""
    predictor = Predictor(package)
    card = package.card
    size, crop = card.input_size, card.preprocessing.crop
    model = f"{card.name} {card.version} ({size} px)"
    for kind, names in INPUTS.items():
        files = [shared / name for name in names]
        prepared = [to_model_input(pydicom.dcmread(f), size, crop=crop) for f in files]
        for batch in (1, 16):
            chosen_files = [files[i % len(files)] for i in range(batch)]
            chosen = [prepared[i % len(prepared)] for i in range(batch)]
            tensors = np.stack([p.tensor for p in chosen])

            def full(paths: list[Path] = chosen_files, b: int = batch) -> int:
                images = [to_model_input(pydicom.dcmread(p), size, crop=crop) for p in paths]
                for result in predictor.predict(images, batch_size=b):
                    result.peak_on_original()
                return len(images)

            def with_gradcam(images: list = chosen, b: int = batch) -> int:  # type: ignore[type-arg]
                predictor.predict(images, batch_size=b)
                return len(images)

            def bare(x: np.ndarray = tensors) -> int:
                package.model.predict_on_batch(x)
                return len(x)

            rates = {}
            for name, work in (("full", full), ("predictor", with_gradcam), ("bare", bare)):
                rates[name] = rate(work, seconds)
                ratio = f"{rates['full'] / rates['bare']:.2f}x" if name == "bare" else ""
                print(
                    f"| {model} | {kind} | {name} | {batch} | {rates[name]:.1f} | {ratio} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

"""Evaluation figures as PNG files.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no global backend
state): rendering to PNG needs no display and no ``matplotlib.use`` call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from training.metrics import Confusion, calibration_bins, roc_curve


def plot_roc(
    labels: ArrayLike,
    probabilities: ArrayLike,
    points: dict[str, tuple[float, float]],
    title: str,
    path: Path,
) -> None:
    """ROC curve with the operating points ``name -> (sensitivity, specificity)`` marked."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    ax.plot(fpr, tpr, lw=2, label="model")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    for name, (sens, spec) in points.items():
        ax.scatter([1 - spec], [sens], zorder=3, label=f"{name} ({sens:.2f} / {spec:.2f})")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_calibration(
    labels: ArrayLike, raw: ArrayLike, calibrated: ArrayLike, path: Path, n_bins: int = 10
) -> None:
    """Reliability diagram of the raw score and the calibrated probability."""
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    for name, values in (("raw score", raw), ("calibrated", calibrated)):
        mean, observed, counts = calibration_bins(labels, values, n_bins)
        keep = counts > 0
        ax.plot(mean[keep], observed[keep], marker="o", label=name)
    ax.set(
        xlabel="predicted probability",
        ylabel="observed fraction fractured",
        title="Calibration",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_confusion(confusion: Confusion, title: str, path: Path) -> None:
    """A 2 x 2 confusion matrix with counts (rows truth, columns prediction)."""
    matrix = np.array(confusion.as_matrix())
    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=14)
    ax.set_xticks([0, 1], ["no fracture", "fracture"])
    ax.set_yticks([0, 1], ["no fracture", "fracture"])
    ax.set(xlabel="predicted", ylabel="truth", title=title)
    fig.tight_layout()
    fig.savefig(path)

"""A confusion matrix as a CSV of counts and a PNG (``python main.py --eval RUN_DIR`` writes both into the run).

Rows are the true class, columns the predicted class. The PNG colours each cell by its share of the true
class (row-normalised, so rare and common classes read alike) and prints the counts when they fit.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from plots.curves import plt, save
from plots.page import write

MAX_ANNOTATED = 20  # classes up to which every cell gets its count written in


def confusion_csv(matrix, class_names: Sequence[str]) -> str:
    """Header: the predicted classes; then one row per true class, its name first, then the counts."""
    counts = _counts(matrix, class_names)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, counts.tolist()):
        w.writerow([name, *row])
    return out.getvalue()


def _counts(matrix, class_names: Sequence[str]) -> np.ndarray:
    counts = np.asarray(matrix, dtype=np.int64)  # a CPU torch tensor, nested lists or an array
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {n} class names")
    return counts


def confusion_figure(matrix, class_names: Sequence[str], *, top1: Optional[float] = None,
                     title: str = "Confusion matrix"):
    counts = _counts(matrix, class_names)
    n = len(class_names)
    per_row = counts.sum(1, keepdims=True)
    share = np.divide(counts, per_row, out=np.zeros(counts.shape, dtype=np.float64), where=per_row > 0)
    side = max(5.0, 0.45 * n) if n <= MAX_ANNOTATED else max(8.0, 0.16 * n)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fontsize = 8 if n <= MAX_ANNOTATED else 5  # a 100-class figure has about 19 pixels per row
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", rotation_mode="anchor", fontsize=fontsize)
    ax.set_yticks(range(n), class_names, fontsize=fontsize)
    if n <= MAX_ANNOTATED:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title + (f" (top-1 {top1:.2f}%)" if top1 is not None else ""))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return fig


def write_confusion(matrix, class_names: Sequence[str], folder: str | Path, stem: str = "confusion_best", *,
                    top1: Optional[float] = None, title: str = "Confusion matrix") -> tuple[Path, Path]:
    """``folder/stem.csv`` (counts) and ``folder/stem.png`` (row-normalised colours, counts written in up to
    20 classes, ``top1`` in the title if given), each written atomically; a write that fails is a ``RunFailed``
    naming the file. Returns (csv path, png path)."""
    folder = Path(folder)
    csv_path = write(folder / f"{stem}.csv", confusion_csv(matrix, class_names))
    png_path = save(confusion_figure(matrix, class_names, top1=top1, title=title), folder / f"{stem}.png")
    return csv_path, png_path

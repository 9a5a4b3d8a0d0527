"""Training curves: validation accuracy of every run, loss beside accuracy, train vs. validation loss.

A group of runs over several seeds is drawn as its mean with a ±1 std band. Each experiment keeps
one colour in every figure of a comparison.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from core.files import atomic_write  # noqa: E402
from plots.runs import Group  # noqa: E402


def colours(groups: list[Group]) -> dict[str, tuple]:
    """One colour per experiment, fixed by its position in the comparison."""
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    return {g.label: cmap(i % cmap.N) for i, g in enumerate(groups)}


def _legend_label(g: Group) -> str:
    return f"{g.label} (mean ± std, {len(g.runs)} seeds)" if len(g.runs) > 1 else g.label


def _draw(ax, g: Group, key: str, colour, **style) -> bool:
    epochs, mean, std = g.curve(key)
    if not epochs:
        return False
    ax.plot(epochs, mean, color=colour, marker="o" if len(epochs) <= 30 else None, markersize=3,
            label=style.pop("label", _legend_label(g)), **style)
    if any(s is not None for s in std):
        lo = [m - (s or 0.0) for m, s in zip(mean, std)]
        hi = [m + (s or 0.0) for m, s in zip(mean, std)]
        ax.fill_between(epochs, lo, hi, color=colour, alpha=0.18, linewidth=0)
    return True


def _finish(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    epochs = {float(x) for line in ax.get_lines() for x in line.get_xdata()}
    if len(epochs) == 1:  # a single epoch: the locator alone would tick 0.96, 0.98, ... around it
        (epoch,) = epochs
        ax.set_xlim(epoch - 1, epoch + 1)
        ax.set_xticks([epoch])


def _datasets(groups: list[Group]) -> str:
    names = sorted({g.first.dataset for g in groups})
    return names[0] if len(names) == 1 else ", ".join(names)


def save(fig, path: Path) -> Path:
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def val_accuracy(groups: list[Group], colour: dict, path: Path) -> Path:
    """Seed 000's model comparison: validation accuracy per epoch, every run on one axis."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for g in groups:
        _draw(ax, g, "val_acc", colour[g.label])
    _finish(ax, "epoch", "validation accuracy (%)", f"Validation accuracy per epoch ({_datasets(groups)})")
    ax.legend(fontsize="small", loc="lower right")
    return save(fig, path)


def loss_and_accuracy(groups: list[Group], colour: dict, path: Path) -> Path:
    """Seed 002's comparison: training loss and validation accuracy side by side."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for g in groups:
        _draw(left, g, "train_loss", colour[g.label])
        _draw(right, g, "val_acc", colour[g.label])
    _finish(left, "epoch", "training loss (cross-entropy)", "Training loss")
    _finish(right, "epoch", "validation accuracy (%)", "Validation accuracy")
    handles, labels = right.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize="small",
               bbox_to_anchor=(0.5, -0.02 - 0.04 * math.ceil(len(labels) / 4)))
    fig.suptitle(f"Training loss and validation accuracy ({_datasets(groups)})")
    return save(fig, path)


def convergence(groups: list[Group], colour: dict, path: Path) -> Path:
    """Seed 004's convergence plot, one panel per experiment: training vs. validation loss."""
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, g in zip(axes.flat, groups):
        _draw(ax, g, "train_loss", colour[g.label], label="training")
        _draw(ax, g, "val_loss", colour[g.label], label="validation", linestyle="--")
        _finish(ax, "epoch", "loss (cross-entropy)", g.label + (f" ({len(g.runs)} seeds)" if len(g.runs) > 1 else ""))
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle("Training vs. validation loss (solid: training, dashed: validation)")
    fig.tight_layout()
    return save(fig, path)

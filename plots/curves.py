"""Training curves: validation accuracy of every run, training beside validation loss, and their gap per run.

A group of runs over several seeds is drawn as its mean with a ±1 std band. Each experiment keeps
one colour in every figure of a comparison.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from plots.page import write  # noqa: E402
from plots.runs import Group, short_labels, split_prefix  # noqa: E402


# tab10's ten, then Dark2's eight: all strong enough for a thin line or a small marker on white (tab20's
# light halves are not).
PALETTE = [plt.get_cmap("tab10")(i) for i in range(10)] + [plt.get_cmap("Dark2")(i) for i in range(8)]


def colour_slot(label: str) -> int:
    """The palette slot an experiment's name asks for: a hash of the name, the same in every process and
    every comparison (Python's ``hash`` of a str is salted per process)."""
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "big") % len(PALETTE)


def colours(groups: list[Group]) -> dict[str, tuple]:
    """One colour per experiment, derived from its name, so an experiment keeps its colour in every figure
    of every comparison it appears in. Two names of one comparison that ask for the same slot: the one
    later in name order takes the next free slot (only then does a colour depend on the company)."""
    taken: dict[int, str] = {}
    out = {}
    for label in sorted(g.label for g in groups):
        slot = colour_slot(label)
        for step in range(len(PALETTE)):
            if (slot + step) % len(PALETTE) not in taken:
                slot = (slot + step) % len(PALETTE)
                break
        taken[slot] = label
        out[label] = PALETTE[slot]
    return out


def _legend_label(g: Group, short: dict[str, str]) -> str:
    """The label without the part all labels share (figure titles name it), and its seeds."""
    label = short.get(g.label, g.label)
    return f"{label} (mean ± std, {len(g.counted)} seeds)" if len(g.counted) > 1 else label


def _draw(ax, g: Group, key: str, colour, short: dict[str, str], **style) -> bool:
    epochs, mean, std = g.curve(key)
    if not epochs:
        return False
    ax.plot(epochs, mean, color=colour, marker="o" if len(epochs) <= 30 else None, markersize=3,
            label=style.pop("label", _legend_label(g, short)), **style)
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
    """What a title says the figure is of: the datasets. Not the prefix the legend leaves out of every label
    ("sizes-fashion_mnist-…" read as a title cut short): the page's caption names it (``names_note``)."""
    return ", ".join(sorted({g.first.dataset for g in groups}))


def names_note(groups: list[Group]) -> str:
    """A caption's sentence on the prefix the figure leaves out of the experiments' names, if any."""
    prefix = split_prefix([g.label for g in groups])[0]
    return f' Experiments are named without the prefix they share, "{prefix}".' if prefix else ""


def save(fig, path: Path) -> Path:
    try:
        write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def val_accuracy(groups: list[Group], colour: dict, path: Path) -> Path:
    """Seed 000's model comparison: validation accuracy per epoch, every run on one axis."""
    short = short_labels(groups)
    fig, ax = plt.subplots(figsize=(8, 5))
    for g in groups:
        _draw(ax, g, "val_acc", colour[g.label], short)
    _finish(ax, "epoch", "validation accuracy (%)", f"Validation accuracy per epoch ({_datasets(groups)})")
    ax.legend(fontsize="small", loc="lower right")
    return save(fig, path)


def losses(groups: list[Group], colour: dict, path: Path) -> Path:
    """Seed 002's comparison, with the accuracy panel (val_accuracy.png's) traded for validation loss:
    training loss and validation loss side by side, on one scale."""
    short = short_labels(groups)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for g in groups:
        _draw(left, g, "train_loss", colour[g.label], short)
        _draw(right, g, "val_loss", colour[g.label], short)
    _finish(left, "epoch", "loss (cross-entropy)", "Training loss")
    _finish(right, "epoch", "loss (cross-entropy)", "Validation loss")
    right.tick_params(labelleft=True)
    handles, labels = right.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize="small",
               bbox_to_anchor=(0.5, -0.02 - 0.04 * math.ceil(len(labels) / 4)))
    fig.suptitle(f"Training and validation loss ({_datasets(groups)})")
    return save(fig, path)


def convergence(groups: list[Group], colour: dict, path: Path) -> Path:
    """Seed 004's convergence plot, one panel per experiment: training vs. validation loss."""
    short = short_labels(groups)
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, g in zip(axes.flat, groups):
        _draw(ax, g, "train_loss", colour[g.label], short, label="training")
        _draw(ax, g, "val_loss", colour[g.label], short, label="validation", linestyle="--")
        _finish(ax, "epoch", "loss (cross-entropy)",
                short[g.label] + (f" ({len(g.counted)} seeds)" if len(g.counted) > 1 else ""))
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(f"Training vs. validation loss ({_datasets(groups)}; solid: training, dashed: validation)")
    fig.tight_layout()
    return save(fig, path)

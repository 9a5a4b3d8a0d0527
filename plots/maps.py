"""Drawing what a trained model looks at: the attention figure (every attention model's rollout on the same
validation images) and the feature figure (the first conv layers of each distinct stem).

Only drawing: the numbers come from ``evaluate.maps``, which runs the models, as arrays (anything
``numpy.asarray`` reads); nothing here builds or runs a model.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from plots.curves import plt, save
from plots.runs import split_prefix

FEATURE_CHANNELS = 8  # channels shown per conv layer
FEATURE_LAYERS = 2  # first conv layers shown


@dataclasses.dataclass
class AttentionComparison:
    """What the attention figure shows, for captions and tests."""

    path: Path
    labels: list[str]  # the columns (one per model)
    indices: list[int]  # the rows: positions in the validation split
    targets: list[int]
    preds: list[list[int]]  # [column][row]
    grids: list[Any]  # [column]: (rows, side, side) arrays, attention relative to uniform
    class_token: list[bool]
    right: int  # the first ``right`` rows are right in every model, the others wrong in at least one
    missed_in_pool: int  # images of the pool some model gets wrong
    pool: int
    marked: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (row, column) framed in red
    # [column]: which run's model it is, "seed 0, best.pt" (an experiment of several seeds shows one); "" unknown
    runs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Stem:
    """One row block of the feature figure: a conv stem (``layers``: its first conv layers' outputs on one
    image, each (name, output channels, (C, h, w) array)), the model shown and the others that share it."""

    label: str
    others: list[str]
    signature: tuple[str, ...]  # the stem's layers in a few words each
    layers: list[tuple[str, int, Any]]


def _show_image(ax, img) -> None:
    img = np.asarray(img)
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])


def _wrap(label: str, width: int) -> str:
    """``label`` in lines of about ``width`` characters, broken after a ``_`` or ``-`` (run names have no spaces)."""
    lines = [""]
    for part in re.split(r"(?<=[-_ ])", label):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def _gridlines(ax, side: int, h: int, w: int) -> None:
    for j in range(1, side):
        ax.axvline(j * w / side - 0.5, color="0.2", lw=0.4, alpha=0.45)
        ax.axhline(j * h / side - 0.5, color="0.2", lw=0.4, alpha=0.45)


def _grey(img) -> np.ndarray:
    img = np.asarray(img)
    return img.mean(-1) if img.shape[-1] > 1 else img[..., 0]


def draw_attention(shown: AttentionComparison, display, class_name: Callable[[int], str]) -> Path:
    """The attention figure into ``shown.path``: ``display`` holds the rows' images, (rows, H, W, C) in [0, 1];
    ``class_name`` names a label. Fills ``shown.marked``."""
    from matplotlib.colors import LogNorm

    rows, cols = len(shown.indices), 1 + len(shown.labels)
    cell = min(1.5, 7.6 / cols)  # about 1000 px wide at save()'s 120 dpi, whatever the number of models
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 0.9, cell * rows + 0.9), squeeze=False,
                             layout="constrained")  # room for the colour bar beside every row
    # Shares are ratios to uniform, so ×2 and ÷2 get equal room: a log scale centred on 1.
    values = np.concatenate([np.asarray(g, dtype=np.float64).ravel() for g in shown.grids])
    top = max(1.5, float(values.max()), 1 / max(float(values.min()), 1e-3))
    norm = LogNorm(1 / top, top)
    short = split_prefix(shown.labels)[1]
    display = np.asarray(display)
    h, w = display.shape[1:3]
    for r in range(rows):
        name = class_name(shown.targets[r])
        _show_image(axes[r, 0], display[r])
        axes[r, 0].set_ylabel(f"true: {name}\n#{shown.indices[r]}", fontsize="small")
        for c in range(len(shown.labels)):
            ax = axes[r, 1 + c]
            grid = np.asarray(shown.grids[c][r])
            # The map lies over the image, in grey so the colours are the map's alone: a glance tells where
            # a token sits on the object, which a map beside the image would leave to the reader.
            ax.imshow(_grey(display[r]), cmap="gray", vmin=0, vmax=1)
            image = ax.imshow(grid, cmap="RdBu_r", norm=norm, alpha=0.7, interpolation="nearest",
                              extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            _gridlines(ax, grid.shape[0], h, w)
            ax.set_xticks([])
            ax.set_yticks([])
            pred = shown.preds[c][r]
            if pred != shown.targets[r]:
                shown.marked.append((r, c))
                for spine in ax.spines.values():
                    spine.set(color="red", linewidth=3)
                ax.set_xlabel(f"pred: {class_name(pred)}", color="red", fontsize="small")
    axes[0, 0].set_title("input", fontsize="small")
    for c, label in enumerate(short):
        grid = np.asarray(shown.grids[c])
        read = "class token" if shown.class_token[c] else "mean of queries"
        label = _wrap(label, int(cell * 14))  # about 14 characters of the small font fit an inch
        run = shown.runs[c] if c < len(shown.runs) and shown.runs[c] else ""
        axes[0, 1 + c].set_title(f"{label}\n{run + chr(10) if run else ''}{grid.shape[1]}×{grid.shape[2]} tokens\n{read}",
                                 fontsize="small" if cell >= 1.3 else "x-small")
    bar = fig.colorbar(image, ax=axes, shrink=min(1.0, 3.0 / rows), pad=0.02, aspect=30)
    ticks = [2.0 ** e for e in range(-8, 9) if 1 / top <= 2.0 ** e <= top]
    if len(ticks) < 3:  # a scale within ×1/2 .. ×2: its ends
        ticks = [1 / top, 1.0, top]
    bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
    bar.minorticks_off()
    bar.set_label("attention rollout ÷ uniform share (1 = uniform)", fontsize="small")
    # The title names no experiment: the columns do, without the prefix they share (the caption names it), as
    # a prefix cut short in the title ("sizes-fashion_mnist-…") read as a name cut off.
    fig.suptitle("Attention rollout on the same validation images (red frame: misclassified)", fontsize="medium")
    return save(fig, shown.path)


def stem_figure(stems: list[Stem], image, image_name: str, path: Path) -> Path:
    """One row block per distinct stem: its first conv layers' first ``FEATURE_CHANNELS`` channels on one
    validation image (``image``, (H, W, C) in [0, 1], of class ``image_name``)."""
    cols = 1 + FEATURE_CHANNELS
    rows = sum(len(stem.layers) for stem in stems)
    width = 0.95 * cols
    fig = plt.figure(figsize=(width, 1.0 * rows + 0.6 * len(stems) + 0.4), layout="constrained")
    subfigs = fig.subfigures(len(stems), 1, height_ratios=[len(stem.layers) + 0.5 for stem in stems],
                             squeeze=False)[:, 0]
    short = split_prefix([label for stem in stems for label in [stem.label, *stem.others]])[1]
    names = iter(short)
    for sub, stem in zip(subfigs, stems):
        label, others = next(names), [next(names) for _ in stem.others]
        also = f" (also {', '.join(others)})" if others else ""
        sub.suptitle(_wrap(f"{label}{also}:", int(width * 14)) + "\n" + ", ".join(stem.signature),
                     fontsize="small")
        axes = sub.subplots(len(stem.layers), cols, squeeze=False)
        for row, (name, out_channels, fmap) in enumerate(stem.layers):
            fmap = np.asarray(fmap)
            if row == 0:
                _show_image(axes[row, 0], image)
                axes[row, 0].set_title(f"input ({image_name})", fontsize="x-small")
            else:
                axes[row, 0].axis("off")
            for c in range(FEATURE_CHANNELS):
                ax = axes[row, 1 + c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= fmap.shape[0]:
                    ax.axis("off")
                    continue
                ax.imshow(fmap[c], cmap="viridis", interpolation="nearest")
                if row == 0:
                    ax.set_title(f"ch {c}", fontsize="x-small")
            axes[row, 1].set_ylabel(f"{name}\n{out_channels} ch, {fmap.shape[1]}×{fmap.shape[2]}",
                                    fontsize="x-small")
    fig.suptitle(f"First {len(stems[0].layers)} conv layers of each distinct stem, "
                 f"first {FEATURE_CHANNELS} channels (conv outputs before normalisation; own scale per map)",
                 fontsize="small")
    return save(fig, path)


def attention_caption(shown: AttentionComparison) -> str:
    rows, wrong = len(shown.indices), len(shown.indices) - shown.right
    patches, received = "the class token's attention to the patches", \
        "the attention each token receives, averaged over queries"
    if all(shown.class_token):
        read = patches
    elif not any(shown.class_token):
        read = f"{received} (no class token)"
    else:
        read = f"{patches} where a model has one, else {received}"
    first = f"the first {shown.pool} validation images"
    if shown.right:
        right = f"The first {shown.right} rows are classified correctly by every model"
    else:
        right = f"No image of {first} is classified correctly by every model"
    if shown.missed_in_pool == 0:
        missed = f"none of {first} is misclassified by any model"
    elif wrong:
        which = f"the last {wrong}" if shown.right else f"all {wrong}"
        missed = (f"{which} {'is' if wrong == 1 else 'are'} misclassified by at least one model "
                  f"({shown.missed_in_pool} of {first} are): red frame and prediction")
    else:
        missed = f"no row is misclassified ({shown.missed_in_pool} of {first} are)"
    prefix = split_prefix(shown.labels)[0]
    names = f' Columns are named without the prefix they share, "{prefix}".' if prefix else ""
    runs = set(shown.runs)
    which = "" if not shown.runs or "" in runs else \
        (f" Each column is one run's model, for every experiment the run of {next(iter(runs))} (other seeds' "
         "models are not shown)." if len(runs) == 1 else
         " Each column is one run's model, its seed and checkpoint under the experiment's name (other seeds' "
         "models are not shown).")
    return (f"The same {rows} validation images (rows; true class on the left) in every attention model "
            f"(columns): attention rollout over all layers, {read}, drawn as each model's token grid over the "
            f"image; colour = attention ÷ uniform share, one log scale for the whole figure (red: more than "
            f"uniform, blue: less). {right}; {missed}.{which}{names}")


def stems_caption(stems: int, models: int, image_index: int, patchify: list[str], prefix: str = "") -> str:
    """``prefix``: what the models' names share, which the figure leaves out of them."""
    return (f"{stems} different conv stem{'s' * (stems > 1)} among {models} models, one row block each (models "
            f"sharing a stem are named beside it): the first {FEATURE_CHANNELS} channels of their first "
            f"{FEATURE_LAYERS} conv layers on validation image #{image_index}"
            + (f"; {', '.join(patchify)} only patchif{'ies' if len(patchify) == 1 else 'y'} (no conv stem to draw)."
               if patchify else ".") + (f' Models are named without the prefix they share, "{prefix}".' if prefix else ""))

"""What a trained model looks at: attention maps (with rollout) and the first conv layers' feature maps.

Both rebuild the model from the run's ``config.yaml`` through the public ``models`` and ``data``
functions, load its checkpoint (``best.pt``, else ``last.pt``) on the CPU and read validation images
through the same normalisation as training. ``inspect_groups`` draws one attention figure per dataset
(the same images for every model, side by side) and feature maps only of conv stems that differ.
"""
from __future__ import annotations

import dataclasses
import inspect as pyinspect
import math
import re
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from config import from_dict
from core.errors import UserError
from data import DatasetSpec, TensorLoader, get_spec, load_data
from models import build_model
from models.weights import load_weights
from plots.curves import plt, save
from plots.runs import Group, Run, split_prefix

FEATURE_CHANNELS = 8  # channels shown per conv layer
FEATURE_LAYERS = 2  # first conv layers shown
POOL = 512  # the first validation images, from which the attention figure picks its rows
# What one model can raise on the way (bad checkpoint, missing data, a forward that fails): a note, not a crash.
MODEL_ERRORS = (UserError, FileNotFoundError, RuntimeError, ValueError)


@dataclasses.dataclass
class Sample:
    images: torch.Tensor  # (k, C, S, S), normalised as the model saw them in validation
    display: torch.Tensor  # (k, S, S, C) in [0, 1]
    labels: list[int]
    spec: DatasetSpec
    indices: list[int] = dataclasses.field(default_factory=list)  # positions in the validation split

    def name(self, label: int) -> str:
        return self.spec.class_name(label)

    def subset(self, picked: list[int]) -> "Sample":
        return Sample(self.images[picked], self.display[picked], [self.labels[i] for i in picked], self.spec,
                      [self.indices[i] for i in picked])


def has_attention(model: nn.Module) -> bool:
    return "return_attention" in pyinspect.signature(model.forward).parameters


def first_convs(model: nn.Module, n: int = FEATURE_LAYERS) -> list[tuple[str, nn.Conv2d]]:
    """The first ``n`` convolutions that are not patch embeddings (kernel == stride > 1)."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
             and not (m.kernel_size[0] == m.stride[0] > 1)]
    return convs[:n]


def _conv_outputs(model: nn.Module, image: torch.Tensor) -> list[tuple[str, nn.Conv2d, torch.Tensor]]:
    """(name, conv, its output (C, h, w)) for ``first_convs`` on one normalised image (C, S, S)."""
    convs = first_convs(model)
    if not convs:
        return []
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out[0].detach()))
             for name, m in convs]
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        for h in hooks:
            h.remove()
    return [(name, conv, outputs[name]) for name, conv in convs]


def load_model(run: Run) -> nn.Module:
    cfg = from_dict(run.config)
    model = build_model(cfg, get_spec(cfg.data.name))
    ckpt = run.checkpoint()
    if ckpt is None:
        raise FileNotFoundError("no checkpoint (best.pt or last.pt); output.checkpoints was off")
    load_weights(model, ckpt, f"{cfg.model.name} on {cfg.data.name}")
    return model.eval()


def load_pool(run: Run, cache: dict) -> Sample:
    """The first ``POOL`` validation images of the run's dataset, read once per dataset."""
    cfg = from_dict(run.config)
    key = ("pool", cfg.data.name, cfg.data.root)
    if key not in cache:
        data = load_data(dataclasses.replace(cfg.data, download=False, limit_val=POOL))
        x, y = data.val
        spec = data.spec
        loader = TensorLoader(x, y, batch_size=len(y), mean=spec.mean, std=spec.std)
        images, labels = next(iter(loader))
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        display = (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1)
        cache[key] = Sample(images, display, labels.tolist(), spec, list(range(len(y))))
    return cache[key]


def _show_image(ax, img: torch.Tensor) -> None:
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def token_layout(num_tokens: int) -> tuple[bool, int]:
    """(has a class token, grid side) for a square token grid with or without a leading class token."""
    side = math.isqrt(num_tokens - 1)
    if num_tokens > 1 and side * side == num_tokens - 1:
        return True, side
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens are not a square grid (with or without a class token)")
    return False, side


def rollout(maps: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): head-averaged maps with the residual as 0.5 I,
    row-normalised and multiplied from the first layer to the last. (B, N, N)."""
    eye = torch.eye(maps[0].shape[-1])
    joint = eye.expand_as(maps[0][:, 0])
    for a in maps:
        a = 0.5 * a.float().mean(1) + 0.5 * eye
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    return joint


def attention_grids(maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per image, (last layer, rollout) as (B, side, side) maps, and whether a class token was read.

    With a class token: its attention over the patches. Without one (CNN+Transformer, which
    pools all tokens): the attention each token receives, averaged over queries.
    """
    cls, side = token_layout(maps[-1].shape[-1])
    last, joint = maps[-1].float().mean(1), rollout(maps)
    if cls:
        last, joint = last[:, 0, 1:], joint[:, 0, 1:]
    else:
        last, joint = last.mean(1), joint.mean(1)
    b = last.shape[0]
    return last.reshape(b, side, side), joint.reshape(b, side, side), cls


@dataclasses.dataclass
class Attended:
    """One model over the pool: predictions and its attention rollout as a token grid."""

    preds: list[int]
    grids: torch.Tensor  # (n, side, side): attention share × number of tokens, so 1 = uniform
    class_token: bool


def attention_share(maps: list[torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """The rollout as (B, side, side) relative to uniform (mean 1), and whether a class token was read.

    With a class token its row over the patches is renormalised (its share to itself left out), so a
    grid always sums to its number of tokens and grids of different sizes share one scale.
    """
    _, joint, cls = attention_grids(maps)
    share = joint / joint.sum((1, 2), keepdim=True)
    return share * joint[0].numel(), cls


def attend(model: nn.Module, images: torch.Tensor, batch: int = 64) -> Attended:
    preds, grids, cls = [], [], False
    with torch.no_grad():
        for x in images.split(batch):  # batches keep the (B, H, N, N) maps of every layer small
            logits, maps = model(x, return_attention=True)
            grid, cls = attention_share([m.cpu() for m in maps])
            preds += logits.argmax(1).tolist()
            grids.append(grid)
    return Attended(preds, torch.cat(grids), cls)


def _spread(order: list[int], count: int, labels: list[int], used: set) -> list[int]:
    """The first ``count`` of ``order``, taking classes not in ``used`` first (``used`` grows)."""
    fresh = []
    for i in order:
        if len(fresh) < count and labels[i] not in used:
            fresh.append(i)
            used.add(labels[i])
    rest = [i for i in order if i not in fresh]
    return fresh + rest[: count - len(fresh)]


def pick_images(labels: list[int], preds: list[list[int]], k: int) -> tuple[list[int], list[int]]:
    """Positions of up to ``k`` images, as (right by every model, wrong in at least one).

    About half are wrong somewhere when that many are, the most-missed first; both halves take
    different classes where they can. Ties go to the earlier image, so the pick is deterministic.
    """
    wrong = [sum(p[i] != y for p in preds) for i, y in enumerate(labels)]
    missed = sorted((i for i, w in enumerate(wrong) if w), key=lambda i: (-wrong[i], i))
    right = [i for i, w in enumerate(wrong) if not w]
    used: set = set()
    missed = _spread(missed, max(k // 2, k - len(right)), labels, used)
    return _spread(right, k - len(missed), labels, used), missed


@dataclasses.dataclass
class AttentionComparison:
    """What ``attention_comparison`` drew, for captions and tests."""

    path: Path
    labels: list[str]  # the columns (one per model)
    indices: list[int]  # the rows: positions in the validation split
    targets: list[int]
    preds: list[list[int]]  # [column][row]
    grids: list[torch.Tensor]  # [column]: (rows, side, side), relative to uniform
    class_token: list[bool]
    right: int  # the first ``right`` rows are right in every model, the others wrong in at least one
    missed_in_pool: int  # images of the pool some model gets wrong
    pool: int
    marked: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (row, column) framed in red


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


def _grey(img: torch.Tensor) -> torch.Tensor:
    return img.mean(-1) if img.shape[-1] > 1 else img[..., 0]


def attention_comparison(columns: list[tuple[str, nn.Module]], pool: Sample, images: int, path: Path,
                         log=print) -> tuple[Optional[AttentionComparison], list[str]]:
    """One figure: ``images`` validation images (rows) from ``pool`` seen by every model (columns).

    Returns what it drew (None if no model could be run) and a note per model left out.
    """
    notes, seen = [], []
    for label, model in columns:
        try:
            seen.append((label, attend(model, pool.images)))
        except MODEL_ERRORS as e:
            notes.append(_skipped(label, "attention maps", e))
            log(f"warning: {notes[-1]}")
    if not seen:
        return None, notes
    right, missed = pick_images(pool.labels, [a.preds for _, a in seen], images)
    rows = right + missed
    shown = AttentionComparison(
        path, [label for label, _ in seen], [pool.indices[i] for i in rows], [pool.labels[i] for i in rows],
        [[a.preds[i] for i in rows] for _, a in seen], [a.grids[rows] for _, a in seen],
        [a.class_token for _, a in seen], len(right),
        sum(any(a.preds[i] != y for _, a in seen) for i, y in enumerate(pool.labels)), len(pool.labels))
    _draw_attention(shown, pool.subset(rows))
    return shown, notes


def _draw_attention(shown: AttentionComparison, sample: Sample) -> None:
    from matplotlib.colors import LogNorm

    rows, cols = len(shown.indices), 1 + len(shown.labels)
    cell = min(1.5, 7.6 / cols)  # about 1000 px wide at save()'s 120 dpi, whatever the number of models
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 0.9, cell * rows + 0.9), squeeze=False,
                             layout="constrained")  # room for the colour bar beside every row
    # Shares are ratios to uniform, so ×2 and ÷2 get equal room: a log scale centred on 1.
    values = torch.cat([g.flatten() for g in shown.grids])
    top = max(1.5, values.max().item(), 1 / max(values.min().item(), 1e-3))
    norm = LogNorm(1 / top, top)
    prefix, short = split_prefix(shown.labels)
    h, w = sample.display.shape[1:3]
    for r in range(rows):
        name = sample.name(shown.targets[r])
        _show_image(axes[r, 0], sample.display[r])
        axes[r, 0].set_ylabel(f"true: {name}\n#{shown.indices[r]}", fontsize="small")
        for c in range(len(shown.labels)):
            ax = axes[r, 1 + c]
            grid = shown.grids[c][r]
            # The map lies over the image, in grey so the colours are the map's alone: a glance tells where
            # a token sits on the object, which a map beside the image would leave to the reader.
            ax.imshow(_grey(sample.display[r]).numpy(), cmap="gray", vmin=0, vmax=1)
            image = ax.imshow(grid.numpy(), cmap="RdBu_r", norm=norm, alpha=0.7, interpolation="nearest",
                              extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            _gridlines(ax, grid.shape[0], h, w)
            ax.set_xticks([])
            ax.set_yticks([])
            pred = shown.preds[c][r]
            if pred != shown.targets[r]:
                shown.marked.append((r, c))
                for spine in ax.spines.values():
                    spine.set(color="red", linewidth=3)
                ax.set_xlabel(f"pred: {sample.name(pred)}", color="red", fontsize="small")
    axes[0, 0].set_title("input", fontsize="small")
    for c, label in enumerate(short):
        grid = shown.grids[c]
        read = "class token" if shown.class_token[c] else "mean of queries"
        label = _wrap(label, int(cell * 14))  # about 14 characters of the small font fit an inch
        axes[0, 1 + c].set_title(f"{label}\n{grid.shape[1]}×{grid.shape[2]} tokens\n{read}",
                                 fontsize="small" if cell >= 1.3 else "x-small")
    bar = fig.colorbar(image, ax=axes, shrink=min(1.0, 3.0 / rows), pad=0.02, aspect=30)
    ticks = [2.0 ** e for e in range(-8, 9) if 1 / top <= 2.0 ** e <= top]
    if len(ticks) < 3:  # a scale within ×1/2 .. ×2: its ends
        ticks = [1 / top, 1.0, top]
    bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
    bar.minorticks_off()
    bar.set_label("attention rollout ÷ uniform share (1 = uniform)", fontsize="small")
    fig.suptitle(f"{prefix + '…: ' if prefix else ''}attention rollout on the same validation images "
                 "(red frame: misclassified)", fontsize="medium")
    save(fig, shown.path)


def _skipped(label: str, what: str, e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{label}: {what} skipped ({type(e).__name__}: {first})"


def _describe(m: nn.Module) -> str:
    """A stem layer in a few words: ``Conv2d 1→16 3×3 pad 1``, ``MaxPool2d 2``, ``ReLU``."""
    name = type(m).__name__
    if isinstance(m, nn.Conv2d):
        words = [f"{name} {m.in_channels}→{m.out_channels} {m.kernel_size[0]}×{m.kernel_size[1]}"]
        for key, default in (("stride", (1, 1)), ("padding", (0, 0)), ("dilation", (1, 1)), ("groups", 1)):
            value = getattr(m, key)
            if value != default:
                value = value[0] if isinstance(value, tuple) and len(set(value)) == 1 else value
                words.append(f"{key.replace('padding', 'pad')} {value}")
        if m.bias is None:
            words.append("no bias")
        if m.padding_mode != "zeros":
            words.append(m.padding_mode)
        return " ".join(words)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return f"{name} {m.kernel_size}" + (f" stride {m.stride}" if m.stride != m.kernel_size else "")
    return name


def stem_signature(model: nn.Module) -> tuple[str, ...]:
    """The architecture of the layers a feature figure shows: every layer from the first to the last of
    ``first_convs`` (convs, norms, activations, pools; dropout does nothing at evaluation). Empty when the
    model has no such conv. Two models with one signature draw near-identical maps, up to their weights."""
    convs = {id(m) for _, m in first_convs(model)}
    if not convs:
        return ()
    layers, found = [], 0
    for m in model.modules():
        if found == len(convs):
            break
        if next(m.children(), None) is not None or isinstance(m, (nn.Dropout, nn.Identity)):
            continue
        found += id(m) in convs
        if found:
            layers.append(_describe(m))
    return tuple(layers)


def stem_figure(stems: list[tuple[str, nn.Module, list[str]]], sample: Sample, path: Path) -> Path:
    """One row block per distinct stem: (label, a model with it, the other labels sharing it), its first
    conv layers' first ``FEATURE_CHANNELS`` channels on the first image of ``sample``."""
    blocks = [_conv_outputs(model, sample.images[0]) for _, model, _ in stems]
    cols = 1 + FEATURE_CHANNELS
    rows = sum(len(b) for b in blocks)
    width = 0.95 * cols
    fig = plt.figure(figsize=(width, 1.0 * rows + 0.6 * len(stems) + 0.4), layout="constrained")
    subfigs = fig.subfigures(len(stems), 1, height_ratios=[len(b) + 0.5 for b in blocks], squeeze=False)[:, 0]
    prefix, short = split_prefix([label for label, _, others in stems for label in [label, *others]])
    names = iter(short)
    for sub, (_, model, others), block in zip(subfigs, stems, blocks):
        label, others = next(names), [next(names) for _ in others]
        also = f" (also {', '.join(others)})" if others else ""
        sub.suptitle(_wrap(f"{label}{also}:", int(width * 14)) + "\n" + ", ".join(stem_signature(model)),
                     fontsize="small")
        axes = sub.subplots(len(block), cols, squeeze=False)
        for row, (name, conv, fmap) in enumerate(block):
            if row == 0:
                _show_image(axes[row, 0], sample.display[0])
                axes[row, 0].set_title(f"input ({sample.name(sample.labels[0])})", fontsize="x-small")
            else:
                axes[row, 0].axis("off")
            for c in range(FEATURE_CHANNELS):
                ax = axes[row, 1 + c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= fmap.shape[0]:
                    ax.axis("off")
                    continue
                ax.imshow(fmap[c].float().numpy(), cmap="viridis", interpolation="nearest")
                if row == 0:
                    ax.set_title(f"ch {c}", fontsize="x-small")
            axes[row, 1].set_ylabel(f"{name}\n{conv.out_channels} ch, {fmap.shape[1]}×{fmap.shape[2]}",
                                    fontsize="x-small")
    fig.suptitle(f"{prefix + '…: ' if prefix else ''}first {len(blocks[0])} conv layers of each distinct stem, "
                 f"first {FEATURE_CHANNELS} channels (conv outputs before normalisation; own scale per map)",
                 fontsize="small")
    return save(fig, path)


def inspect_groups(groups: list[Group], out: Path, images: int, log
                   ) -> tuple[list[tuple[str, str, Path]], list[tuple[str, str, Path]], list[str]]:
    """(attention figures, feature figures, notes) of a comparison, each figure (title, caption, path).

    Per dataset: one attention figure of every attention model on the same validation images, and one
    figure of the conv stems that differ. Each group is shown by its first run with a checkpoint.
    """
    notes: list[str] = []
    by_dataset: dict[str, list[tuple[str, Run, nn.Module]]] = {}
    cache: dict = {}
    for g in groups:
        run = next((r for r in g.runs if r.checkpoint() is not None), None)
        if run is None:
            notes.append(f"{g.label}: no checkpoint (output.checkpoints was off or the run stopped before "
                         f"its first epoch), so no attention or feature maps")
            continue
        try:
            model = load_model(run)
            load_pool(run, cache)
        except MODEL_ERRORS as e:
            notes.append(_skipped(g.label, "attention/feature maps", e))
            log(f"warning: {notes[-1]}")
            continue
        by_dataset.setdefault(run.dataset, []).append((g.label, run, model))
    attention, features = [], []
    for dataset, entries in by_dataset.items():
        suffix = f"_{dataset}" if len(by_dataset) > 1 else ""
        on = f" ({dataset})" if len(by_dataset) > 1 else ""
        pool = load_pool(entries[0][1], cache)
        columns = [(label, model) for label, _, model in entries if has_attention(model)]
        if columns:
            shown, skipped = attention_comparison(columns, pool, images, out / f"attention{suffix}.png", log)
            notes += skipped
            if shown is not None:
                attention.append((f"Attention maps{on}", attention_caption(shown), shown.path))
        figure, note = _features(entries, pool, out / f"features{suffix}.png", log)
        notes += [f"{dataset}: {n}" if on else n for n in note]
        if figure is not None:
            features.append((f"Feature maps of the first conv layers{on}", figure[0], figure[1]))
    return attention, features, notes


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
    return (f"The same {rows} validation images (rows; true class on the left) in every attention model "
            f"(columns): attention rollout over all layers, {read}, drawn as each model's token grid over the "
            f"image; colour = attention ÷ uniform share, one log scale for the whole figure (red: more than "
            f"uniform, blue: less). {right}; {missed}.")


def _features(entries: list[tuple[str, Run, nn.Module]], pool: Sample, path: Path, log
              ) -> tuple[Optional[tuple[str, Path]], list[str]]:
    """((caption, path) of the stem figure, or None; notes): one representative per distinct conv stem."""
    stems: dict[tuple[str, ...], list[tuple[str, nn.Module]]] = {}
    for label, _, model in entries:
        signature = stem_signature(model)
        if signature:  # a model that only patchifies has no conv layers to draw
            stems.setdefault(signature, []).append((label, model))
    if not stems:
        return None, []
    patchify = [label for label, _, model in entries if not stem_signature(model)]
    if len(stems) == 1 and not patchify:
        ((signature, models),) = stems.items()
        return None, [f"all {len(models)} models share the same conv stem ({', '.join(signature)}): feature maps "
                      "omitted, as they are drawn only to compare stems that differ"]
    sample = pool.subset([0])
    chosen = [(models[0][0], models[0][1], [label for label, _ in models[1:]]) for models in stems.values()]
    try:
        figure = stem_figure(chosen, sample, path)
    except MODEL_ERRORS as e:
        note = _skipped(", ".join(label for label, _, _ in chosen), "feature maps", e)
        log(f"warning: {note}")
        return None, [note]
    caption = (f"{len(stems)} different conv stem{'s' * (len(stems) > 1)} among {sum(map(len, stems.values()))} "
               f"models, one row block each (models sharing a stem are named beside it): the first "
               f"{FEATURE_CHANNELS} channels of their first {FEATURE_LAYERS} conv layers on validation image "
               f"#{sample.indices[0]}" + (f"; {', '.join(patchify)} only patchif{'ies' if len(patchify) == 1 else 'y'}"
                                          " (no conv stem to draw)." if patchify else "."))
    return (caption, figure), []

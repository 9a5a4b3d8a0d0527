"""What a trained model looks at, computed from its checkpoint: attention maps (with rollout) and the first conv
layers' feature maps, drawn by ``plots.maps``.

Each model is rebuilt from the run's ``config.yaml`` and its checkpoint (``best.pt``, else ``last.pt``) on the
CPU (``evaluate.model``), and reads validation images through the same normalisation as training.
``inspect_groups`` makes one attention figure per dataset (the same images for every model, side by side) and
feature maps only of conv stems that differ.
"""
from __future__ import annotations

import dataclasses
import inspect as pyinspect
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from core.errors import UserError, one_line
from core.log import get_logger
from data import DatasetSpec, TensorLoader, load_data
from evaluate.model import load_model
from plots.maps import (FEATURE_LAYERS, AttentionComparison, Stem, attention_caption, draw_attention, stem_figure,
                        stems_caption)
from plots.runs import Group, Run, split_prefix
from train.resume import run_config

POOL = 512  # the first validation images, from which the attention figure picks its rows
# What one model can raise on the way (bad checkpoint, missing data, a forward that fails): a note, not a crash.
MODEL_ERRORS = (UserError, FileNotFoundError, RuntimeError, ValueError)
log = get_logger(__name__)


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


def load_pool(run: Run, cache: dict) -> Sample:
    """The first ``POOL`` validation images of the run's dataset, read once per dataset."""
    cfg = run_config(run.path)
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


def attention_comparison(columns: list[tuple[str, nn.Module]], pool: Sample, images: int, path: Path,
                         runs: Optional[dict[str, str]] = None) -> tuple[Optional[AttentionComparison], list[str]]:
    """One figure: ``images`` validation images (rows) from ``pool`` seen by every model (columns).

    ``runs``: by column label, which run's model it is (``shown_run``), written under the label.
    Returns what it drew (None if no model could be run) and a note per model left out.
    """
    notes, seen = [], []
    for label, model in columns:
        try:
            seen.append((label, attend(model, pool.images)))
        except MODEL_ERRORS as e:
            notes.append(_skipped(label, "attention maps", e))
            log.info(f"warning: {notes[-1]}")
    if not seen:
        return None, notes
    right, missed = pick_images(pool.labels, [a.preds for _, a in seen], images)
    rows = right + missed
    shown = AttentionComparison(
        path, [label for label, _ in seen], [pool.indices[i] for i in rows], [pool.labels[i] for i in rows],
        [[a.preds[i] for i in rows] for _, a in seen], [a.grids[rows] for _, a in seen],
        [a.class_token for _, a in seen], len(right),
        sum(any(a.preds[i] != y for _, a in seen) for i, y in enumerate(pool.labels)), len(pool.labels),
        runs=[(runs or {}).get(label, "") for label, _ in seen])
    draw_attention(shown, pool.display[rows], pool.name)
    return shown, notes


def _skipped(label: str, what: str, e: Exception) -> str:
    return f"{label}: {what} skipped ({type(e).__name__ + ': ' if isinstance(e, UserError) else ''}{one_line(e)})"


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


def shown_run(run: Run, g: Group) -> str:
    """Which of an experiment's runs a map shows, in a few words: ``seed 0, best.pt``."""
    checkpoint = run.checkpoint()
    return f"seed {run.seed}" + (f", {checkpoint.name}" if checkpoint is not None else "")


def inspect_groups(groups: list[Group], out: Path, images: int
                   ) -> tuple[list[tuple[str, str, Path]], list[tuple[str, str, Path]], list[str]]:
    """(attention figures, feature figures, notes) of a comparison, each figure (title, caption, path).

    Per dataset: one attention figure of every attention model on the same validation images, and one
    figure of the conv stems that differ. Each group is shown by its first run with a checkpoint, which the
    figure names (``shown_run``): one seed's model, not an average over seeds.
    """
    notes: list[str] = []
    by_dataset: dict[str, list[tuple[str, Run, nn.Module]]] = {}
    runs: dict[str, str] = {}
    cache: dict = {}
    for g in groups:
        run = next((r for r in g.runs if r.checkpoint() is not None), None)
        if run is None:
            notes.append(f"{g.label}: no checkpoint (output.checkpoints was off or the run stopped before "
                         f"its first epoch), so no attention or feature maps")
            continue
        try:
            model = load_model(run.path, None)[1]
            load_pool(run, cache)
        except MODEL_ERRORS as e:
            notes.append(_skipped(g.label, "attention/feature maps", e))
            log.info(f"warning: {notes[-1]}")
            continue
        by_dataset.setdefault(run.dataset, []).append((g.label, run, model))
        runs[g.label] = shown_run(run, g)
    attention, features = [], []
    for dataset, entries in by_dataset.items():
        suffix = f"_{dataset}" if len(by_dataset) > 1 else ""
        on = f" ({dataset})" if len(by_dataset) > 1 else ""
        pool = load_pool(entries[0][1], cache)
        columns = [(label, model) for label, _, model in entries if has_attention(model)]
        if columns:
            shown, skipped = attention_comparison(columns, pool, images, out / f"attention{suffix}.png", runs)
            notes += skipped
            if shown is not None:
                attention.append((f"Attention maps{on}", attention_caption(shown), shown.path))
        figure, note = _features(entries, pool, out / f"features{suffix}.png")
        notes += [f"{dataset}: {n}" if on else n for n in note]
        if figure is not None:
            features.append((f"Feature maps of the first conv layers{on}", figure[0], figure[1]))
    return attention, features, notes


def _features(entries: list[tuple[str, Run, nn.Module]], pool: Sample, path: Path
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
    try:
        shown = [Stem(models[0][0], [label for label, _ in models[1:]], signature,
                      [(name, conv.out_channels, fmap.float()) for name, conv, fmap in
                       _conv_outputs(models[0][1], sample.images[0])])
                 for signature, models in stems.items()]
        figure = stem_figure(shown, sample.display[0], sample.name(sample.labels[0]), path)
    except MODEL_ERRORS as e:
        note = _skipped(", ".join(models[0][0] for models in stems.values()), "feature maps", e)
        log.info(f"warning: {note}")
        return None, [note]
    prefix = split_prefix([label for models in stems.values() for label, _ in models])[0]
    return (stems_caption(len(stems), sum(map(len, stems.values())), sample.indices[0], patchify, prefix), figure), []

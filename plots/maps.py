"""What a trained model looks at: attention maps (with rollout) and the first conv layers' feature maps.

Both rebuild the model from the run's ``config.yaml`` through the public ``models`` and ``data``
functions, load its checkpoint (``best.pt``, else ``last.pt``) on the CPU and read a few validation
images through the same normalisation as training; every run of one dataset is shown the same images.
"""
from __future__ import annotations

import dataclasses
import inspect as pyinspect
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from config import from_dict
from data import DatasetSpec, TensorLoader, get_spec, load_data
from models import build_model
from models.weights import load_weights
from plots.curves import plt, save
from plots.runs import Run

FEATURE_CHANNELS = 8  # channels shown per conv layer
FEATURE_LAYERS = 2  # first conv layers shown


@dataclasses.dataclass
class Sample:
    images: torch.Tensor  # (k, C, S, S), normalised as the model saw them in validation
    display: torch.Tensor  # (k, S, S, C) in [0, 1]
    labels: list[int]
    spec: DatasetSpec

    def name(self, label: int) -> str:
        return self.spec.class_name(label)


def has_attention(model: nn.Module) -> bool:
    return "return_attention" in pyinspect.signature(model.forward).parameters


def first_convs(model: nn.Module, n: int = FEATURE_LAYERS) -> list[tuple[str, nn.Conv2d]]:
    """The first ``n`` convolutions that are not patch embeddings (kernel == stride > 1)."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
             and not (m.kernel_size[0] == m.stride[0] > 1)]
    return convs[:n]


def load_model(run: Run) -> nn.Module:
    cfg = from_dict(run.config)
    model = build_model(cfg, get_spec(cfg.data.name))
    ckpt = run.checkpoint()
    if ckpt is None:
        raise FileNotFoundError("no checkpoint (best.pt or last.pt); output.checkpoints was off")
    load_weights(model, ckpt, f"{cfg.model.name} on {cfg.data.name}")
    return model.eval()


def load_sample(run: Run, k: int, cache: dict) -> Sample:
    """``k`` validation images, one per class where the first few hundred allow it."""
    cfg = from_dict(run.config)
    key = (cfg.data.name, cfg.data.root, k)
    if key not in cache:
        data = load_data(dataclasses.replace(cfg.data, download=False, limit_val=512))
        x, y = data.val
        picked, seen = [], set()
        for i, label in enumerate(y.tolist()):
            if label not in seen:
                picked.append(i)
                seen.add(label)
            if len(picked) == k:
                break
        picked += [i for i in range(len(y)) if i not in picked][: k - len(picked)]
        spec = data.spec
        loader = TensorLoader(x[picked], y[picked], batch_size=len(picked), mean=spec.mean, std=spec.std)
        images, labels = next(iter(loader))
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        display = (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1)
        cache[key] = Sample(images, display, labels.tolist(), spec)
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


def _overlay(ax, img: torch.Tensor, grid: torch.Tensor) -> None:
    _show_image(ax, img)
    g = grid - grid.min()
    g = g / g.max().clamp_min(1e-12)
    h, w = img.shape[:2]
    # The same extent imshow gave the image (pixel centres at integers), so the map covers it exactly.
    ax.imshow(g.numpy(), cmap="inferno", alpha=0.55, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")


def attention_figure(run: Run, label: str, model: nn.Module, sample: Sample, path: Path) -> Path:
    with torch.no_grad():
        logits, maps = model(sample.images, return_attention=True)
    last, joint, cls = attention_grids([m.cpu() for m in maps])
    preds = logits.argmax(1).tolist()
    k = len(sample.labels)
    fig, axes = plt.subplots(k, 3, figsize=(7.5, 2.5 * k), squeeze=False)
    what = "class token → patches" if cls else "attention received per token (no class token)"
    titles = ["input", f"last layer ({len(maps)}), mean over heads", f"rollout over {len(maps)} layers"]
    for i in range(k):
        _show_image(axes[i, 0], sample.display[i])
        axes[i, 0].set_ylabel(f"true: {sample.name(sample.labels[i])}\npredicted: {sample.name(preds[i])}",
                              fontsize="small")
        _overlay(axes[i, 1], sample.display[i], last[i])
        _overlay(axes[i, 2], sample.display[i], joint[i])
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize="small")
    fig.suptitle(f"{label}: attention maps, {what}\n({run.model}, {run.checkpoint().name}; brighter = more attention)",
                 fontsize="medium")
    fig.tight_layout()
    return save(fig, path)


def feature_figure(run: Run, label: str, model: nn.Module, sample: Sample, path: Path) -> Optional[Path]:
    convs = first_convs(model)
    if not convs:
        return None
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out[0].detach()))
             for name, m in convs]
    try:
        with torch.no_grad():
            model(sample.images[:1])
    finally:
        for h in hooks:
            h.remove()
    cols = 1 + FEATURE_CHANNELS
    fig, axes = plt.subplots(len(convs), cols, figsize=(1.5 * cols, 1.8 * len(convs)), squeeze=False)
    for row, (name, conv) in enumerate(convs):
        fmap = outputs[name]
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
            ax.imshow(fmap[c].float().numpy(), cmap="viridis")
            ax.set_title(f"ch {c}", fontsize="x-small")
        axes[row, 1].set_ylabel(f"{name}\n{conv.out_channels} ch, {fmap.shape[1]}×{fmap.shape[2]}", fontsize="x-small")
    fig.suptitle(f"{label}: feature maps of the first conv layers ({run.model}, first {FEATURE_CHANNELS} channels, "
                 f"conv outputs before normalisation)", fontsize="small")
    fig.tight_layout()
    return save(fig, path)


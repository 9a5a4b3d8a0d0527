"""Optimizer and per-step learning-rate schedules."""
from __future__ import annotations

import bisect
import math
from typing import Callable

import torch
import torch.nn as nn

from config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm parameters (1-D tensors), as timm and DeiT do."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, *, fused: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    extra = {"fused": True} if fused else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, **extra)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **extra)
    raise AssertionError(cfg.optimizer)  # config validation lists the choices


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` at optimizer step ``s`` (0-based), for ``LambdaLR``."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    if cfg.schedule == "onecycle":
        # torch's OneCycleLR curve: cosine up from lr/25 over the ramp, cosine down to lr/25e4.
        ramp = warmup or max(1, round(0.3 * total))
        start, end = 1 / 25, 1 / 25e4

        def onecycle(s: int) -> float:
            if s < ramp:
                return end_cos(start, 1.0, s / ramp)
            return end_cos(1.0, end, (s - ramp) / max(1, total - ramp))

        return onecycle

    milestones = sorted(m * steps_per_epoch for m in cfg.milestones)

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        t = (s - warmup) / max(1, total - warmup)  # progress after warmup, 0 -> 1
        if cfg.schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if cfg.schedule == "multistep":
            return cfg.gamma ** bisect.bisect_right(milestones, s)
        return 1.0  # constant

    return factor


def end_cos(a: float, b: float, t: float) -> float:
    """Cosine interpolation from a (t=0) to b (t=1)."""
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))

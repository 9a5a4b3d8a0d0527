"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?").

Patch embedding (a p x p conv with stride p, GELU, BatchNorm), then ``depth``
isotropic blocks: a residual depthwise k x k conv (GELU, BatchNorm) followed by
a pointwise conv (GELU, BatchNorm); global average pool and a linear head.
Named ``convmixer_<dim>_<depth>_ks<kernel>_p<patch>``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.factory import register_model
from models.shapes import patch_problem


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class ConvMixer(nn.Module):
    def __init__(self, *, num_classes: int, in_chans: int, image_size: int, dim: int = 256, depth: int = 8,
                 kernel_size: int = 5, patch_size: int = 2):
        super().__init__()
        for key, value in (("dim", dim), ("depth", depth), ("kernel_size", kernel_size), ("patch_size", patch_size)):
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
        problem = patch_problem(patch_size, image_size, remainder_ok=True)  # a stride-p conv: any grid of 2x2 or more
        if problem:
            raise ValueError(problem)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), nn.GELU(),
                                  nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[
            nn.Sequential(
                Residual(nn.Sequential(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"), nn.GELU(),
                                       nn.BatchNorm2d(dim))),
                nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))
            for _ in range(depth)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (B, dim, H/p, W/p)
        return self.head(self.pool(x).flatten(1))  # (B, num_classes)


@register_model
def convmixer(*, num_classes: int, in_chans: int, image_size: int, dim: int = 256, depth: int = 8,
              kernel_size: int = 5, patch_size: int = 2) -> ConvMixer:
    """ConvMixer with every knob open, for sweeps (defaults: convmixer_256_8_ks5_p2)."""
    return ConvMixer(num_classes=num_classes, in_chans=in_chans, image_size=image_size, dim=dim, depth=depth,
                     kernel_size=kernel_size, patch_size=patch_size)


@register_model(default_dataset="imagenette")
def convmixer_256_12_ks7_p7(*, num_classes: int, in_chans: int, image_size: int) -> ConvMixer:
    """ConvMixer-256/12 for 160 px: kernel 7, patch 7 (996,362 params on Imagenette)."""
    return ConvMixer(num_classes=num_classes, in_chans=in_chans, image_size=image_size, dim=256, depth=12,
                     kernel_size=7, patch_size=7)


@register_model
def convmixer_256_8_ks5_p2(*, num_classes: int, in_chans: int, image_size: int) -> ConvMixer:
    """ConvMixer-256/8, the ConvMixer paper's CIFAR-10 setting: kernel 5, patch 2 (594,186 params on CIFAR-10)."""
    return ConvMixer(num_classes=num_classes, in_chans=in_chans, image_size=image_size, dim=256, depth=8,
                     kernel_size=5, patch_size=2)

"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?"), as seed 004 reimplements it.

Patch embedding (a p x p conv with stride p, GELU, BatchNorm), then ``depth``
isotropic blocks: a residual depthwise k x k conv (GELU, BatchNorm) followed by
a pointwise conv (GELU, BatchNorm); global average pool and a linear head.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import register_model


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class ConvMixer(nn.Module):
    """ConvMixer with every knob open, for sweeps: dim, depth, kernel_size, patch_size (defaults = 256/8)."""

    def __init__(self, *, num_classes: int, in_chans: int, image_size: int, dim: int = 256, depth: int = 8,
                 kernel_size: int = 5, patch_size: int = 2):
        super().__init__()
        for key, value in (("dim", dim), ("depth", depth), ("kernel_size", kernel_size), ("patch_size", patch_size)):
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
        if patch_size > image_size:
            raise ValueError(f"patch_size={patch_size} is larger than the image ({image_size} px)")
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
        return self.head(self.pool(x).flatten(1))


convmixer = register_model(ConvMixer, name="convmixer")


@register_model(default_dataset="imagenette")
def convmixer_256_12(*, num_classes: int, in_chans: int, image_size: int) -> ConvMixer:
    """Seed 004's Imagenette ConvMixer-256/12: kernel 7, patch 7."""
    return ConvMixer(num_classes=num_classes, in_chans=in_chans, image_size=image_size, dim=256, depth=12,
                     kernel_size=7, patch_size=7)


@register_model
def convmixer_256_8(*, num_classes: int, in_chans: int, image_size: int) -> ConvMixer:
    """The ConvMixer authors' CIFAR-10 setting, ConvMixer-256/8: kernel 5, patch 2."""
    return ConvMixer(num_classes=num_classes, in_chans=in_chans, image_size=image_size, dim=256, depth=8,
                     kernel_size=5, patch_size=2)

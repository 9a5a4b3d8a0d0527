"""Seed 000's 8-layer CNN and its prediction head.

Conv(3x3)+BN+ReLU layers with a 2x2 max-pool after the 1st and 4th, taking a
3x32x32 CIFAR image to a 64x8x8 feature map, then global average pool + linear.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import register_model

# (out_channels, kernel_size) per conv layer, as in seed 000's table.
CONV_LAYERS: tuple[tuple[int, int], ...] = ((16, 3), (32, 3), (64, 3), (32, 1), (64, 3), (128, 3), (256, 3), (64, 1))
CONV_LAYERS_HUGE: tuple[tuple[int, int], ...] = CONV_LAYERS[:-1] + ((256, 1),)
POOL_AFTER: tuple[int, ...] = (0, 3)  # max-pool after these conv indices: 32 -> 16 -> 8


class ConvBackbone(nn.Module):
    """The seed's CNN without a head: (B, C, H, W) -> (B, out_channels, H/4, W/4)."""

    def __init__(self, *, in_chans: int = 3, layers=CONV_LAYERS, pool_after=POOL_AFTER):
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_chans
        for i, (out, k) in enumerate(layers):
            blocks += [nn.Conv2d(channels, out, k, padding=k // 2), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i in pool_after:
                blocks.append(nn.MaxPool2d(2))
            channels = out
        self.layers = nn.Sequential(*blocks)
        self.out_channels = channels
        self.reduction = 2 ** len(pool_after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, C_out, H/4, W/4)


class PredictionHead(nn.Module):
    """Global average pool over the feature map, then a linear classifier."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))  # (B, C, h, w) -> (B, num_classes)


def check_feature_map(image_size: int, reduction: int) -> int:
    if image_size % reduction:
        raise ValueError(f"image size {image_size} is not divisible by the CNN's downsampling factor {reduction}")
    return image_size // reduction


class SimpleCNN(nn.Module):
    def __init__(self, *, num_classes: int, in_chans: int, image_size: int, layers=CONV_LAYERS):
        super().__init__()
        self.features = ConvBackbone(in_chans=in_chans, layers=layers)
        check_feature_map(image_size, self.features.reduction)
        self.head = PredictionHead(self.features.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model
def simple_cnn(*, num_classes: int, in_chans: int, image_size: int) -> SimpleCNN:
    """Seed 000's baseline CNN (430,944 conv parameters, 64-channel output)."""
    return SimpleCNN(num_classes=num_classes, in_chans=in_chans, image_size=image_size)


@register_model
def simple_cnn_huge(*, num_classes: int, in_chans: int, image_size: int) -> SimpleCNN:
    """The same CNN with its last (1x1) conv at 256 channels."""
    return SimpleCNN(num_classes=num_classes, in_chans=in_chans, image_size=image_size, layers=CONV_LAYERS_HUGE)


class VGGStyleCNN(nn.Module):
    """Seed 002's SimpleCNN: blocks of two 3x3 conv+BN+ReLU then a 2x2 max-pool, GAP, linear."""

    def __init__(self, *, num_classes: int, in_chans: int, image_size: int, widths=(64, 128, 256, 512)):
        super().__init__()
        if image_size < 2 ** len(widths):  # each pool floors: 28 px -> 14 -> 7 -> 3 -> 1, then GAP
            raise ValueError(f"image size {image_size} is too small for {len(widths)} 2x2 max-pools")
        blocks: list[nn.Module] = []
        channels = in_chans
        for out in widths:
            blocks.append(nn.Sequential(
                nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                nn.MaxPool2d(2)))
            channels = out
        self.features = nn.Sequential(*blocks)
        self.head = PredictionHead(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model
def simple_cnn_seed002(*, num_classes: int, in_chans: int, image_size: int) -> VGGStyleCNN:
    """Seed 002's CNN baseline: 2x(conv3x3+BN+ReLU)+pool blocks 64-128-256-512, GAP, linear (4,694,346 params)."""
    return VGGStyleCNN(num_classes=num_classes, in_chans=in_chans, image_size=image_size)

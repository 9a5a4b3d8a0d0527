"""SimpleCNN: an 8-layer Conv+BN+ReLU network with a global-average-pool head.

Conv(3x3 or 1x1)+BN+ReLU layers with a 2x2 max-pool after the 1st and 4th,
taking a 3x32x32 image to a 64x8x8 feature map, then global average pool +
linear. ``ConvBackbone`` and ``PredictionHead`` are also the CNN half of the
CNN+Transformer (models/cnn_transformer.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.factory import register_model

# (out_channels, kernel_size) per conv layer.
CONV_LAYERS: tuple[tuple[int, int], ...] = ((16, 3), (32, 3), (64, 3), (32, 1), (64, 3), (128, 3), (256, 3), (64, 1))
POOL_AFTER: tuple[int, ...] = (0, 3)  # max-pool after these conv indices: 32 -> 16 -> 8


class ConvBackbone(nn.Module):
    """The CNN without a head: (B, C, H, W) -> (B, out_channels, H/4, W/4)."""

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
    """The feature map's side, or a ValueError if the pools do not divide the image evenly."""
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
        return self.head(self.features(x))  # (B, num_classes)


@register_model
def simple_cnn(*, num_classes: int, in_chans: int, image_size: int) -> SimpleCNN:
    """8-layer Conv+BN+ReLU CNN, 64-channel output, GAP + linear (431,594 params on CIFAR-10)."""
    return SimpleCNN(num_classes=num_classes, in_chans=in_chans, image_size=image_size)


@register_model
def simple_cnn_huge(*, num_classes: int, in_chans: int, image_size: int) -> SimpleCNN:
    """The same CNN with its last (1x1) conv at 256 channels instead of 64."""
    return SimpleCNN(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                     layers=CONV_LAYERS[:-1] + ((256, 1),))

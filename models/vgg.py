"""A VGG-style CNN for small images.

Four blocks of two 3x3 conv+BN+ReLU layers followed by a 2x2 max-pool
(widths 64-128-256-512; 32 px -> 16 -> 8 -> 4 -> 2), then global average
pool and a linear classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.factory import register_model


class VGGStyleCNN(nn.Module):
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
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, H/16, W/16)
        return self.fc(self.pool(x).flatten(1))  # (B, num_classes)


@register_model
def vgg_cifar(*, num_classes: int, in_chans: int, image_size: int) -> VGGStyleCNN:
    """VGG-style CNN: 2x(conv3x3+BN+ReLU)+pool blocks 64-128-256-512, GAP, linear (4,694,346 params on CIFAR-10)."""
    return VGGStyleCNN(num_classes=num_classes, in_chans=in_chans, image_size=image_size)

"""pytorch/examples' MNIST CNN (``mnist/main.py``), for any input size and channel count.

Stem: 3x3 conv to 32, ReLU, 3x3 conv to 64, ReLU, 2x2 max-pool, all unpadded
(28 px -> 12x12x64, 32 px -> 14x14x64). Head: dropout 0.25, flatten, dense
128 + ReLU, dropout 0.5, dense to the classes. The stem also feeds the
conv-stem ViT (models/conv_stem_vit.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.factory import register_model


def mnist_stem(in_chans: int) -> nn.Sequential:
    """(B, C, S, S) -> (B, 64, (S-4)/2, (S-4)/2): conv 3x3 -> 32, ReLU, conv 3x3 -> 64, ReLU, max-pool 2."""
    return nn.Sequential(nn.Conv2d(in_chans, 32, 3), nn.ReLU(inplace=True),
                         nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2))


def mnist_stem_side(image_size: int) -> int:
    """The side of the stem's output map, or a ValueError for images too small for it."""
    side = (image_size - 4) // 2  # two unpadded 3x3 convs, then pool 2
    if side < 1:
        raise ValueError(f"image size {image_size} is too small for the conv stem")
    return side


class MNISTCNN(nn.Module):
    def __init__(self, *, num_classes: int, in_chans: int, image_size: int):
        super().__init__()
        side = mnist_stem_side(image_size)
        self.stem = mnist_stem(in_chans)
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Flatten(), nn.Linear(64 * side * side, 128),
                                  nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))  # (B, 64, s, s) -> (B, num_classes)


@register_model(inputs=(28,))  # native input sizes, px
def mnist_cnn(*, num_classes: int, in_chans: int, image_size: int) -> MNISTCNN:
    """pytorch/examples' MNIST CNN: 2 convs + pool, dense 128 (1,199,882 params on MNIST, 1,626,442 on CIFAR-10)."""
    return MNISTCNN(num_classes=num_classes, in_chans=in_chans, image_size=image_size)

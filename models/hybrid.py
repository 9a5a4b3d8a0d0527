"""Seed 003's CNN (the PyTorch MNIST example) and its hybrid: those convolutions feeding a ViT.

The stem is pytorch/examples' ``mnist/main.py`` without its dense layers:
3x3 conv to 32, ReLU, 3x3 conv to 64, ReLU, 2x2 max-pool (28 px -> 12x12x64,
32 px -> 14x14x64). The seed told vit-pytorch ``image_size=144`` (the 12x12 map
flattened), which that library accepted because it only sliced its position
table; here the ViT is built for the real map, so every position embedding
is used.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from models.layers import Dropout
from models.registry import register_model
from models.vit import SEED003, ViT


def mnist_example_stem(in_chans: int) -> nn.Sequential:
    """(B, C, S, S) -> (B, 64, (S-4)/2, (S-4)/2): conv 3x3 -> 32, ReLU, conv 3x3 -> 64, ReLU, max-pool 2."""
    return nn.Sequential(nn.Conv2d(in_chans, 32, 3), nn.ReLU(inplace=True),
                         nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2))


def stem_side(image_size: int) -> int:
    side = (image_size - 4) // 2  # two unpadded 3x3 convs, then pool 2
    if side < 1:
        raise ValueError(f"image size {image_size} is too small for the conv stem")
    return side


class MNISTExampleCNN(nn.Module):
    """pytorch/examples' MNIST net: the stem, dropout 0.25, dense 128 + ReLU, dropout 0.5, dense to classes."""

    def __init__(self, *, num_classes: int, in_chans: int, image_size: int):
        super().__init__()
        side = stem_side(image_size)
        self.stem = mnist_example_stem(in_chans)
        self.head = nn.Sequential(Dropout(0.25), nn.Flatten(), nn.Linear(64 * side * side, 128),
                                  nn.ReLU(inplace=True), Dropout(0.5), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


@register_model
def cnn_seed003(*, num_classes: int, in_chans: int, image_size: int) -> MNISTExampleCNN:
    """Seed 003's CNN, the PyTorch MNIST example (1,199,882 params on MNIST, 1,626,442 on CIFAR-10)."""
    return MNISTExampleCNN(num_classes=num_classes, in_chans=in_chans, image_size=image_size)


class ConvStemViT(nn.Module):
    """Two valid 3x3 convs + max-pool, then a ViT whose "image" is the (64, h, w) feature map."""

    def __init__(self, *, num_classes: int, in_chans: int, image_size: int, patch_size: Optional[int] = None,
                 **vit_kwargs):
        super().__init__()
        side = stem_side(image_size)
        if patch_size is None:  # the seed's effective grid: 2x2 patches of the map
            if side % 2:
                raise ValueError(f"feature map {side}x{side} has no default patch size; set model.patch_size")
            patch_size = side // 2
        if patch_size < 1 or side % patch_size:
            raise ValueError(f"patch_size={patch_size} does not divide the conv stem's {side}x{side} feature map "
                             f"(image size {image_size}); valid: "
                             + ", ".join(str(p) for p in range(1, side + 1) if side % p == 0))
        self.stem = mnist_example_stem(in_chans)
        self.vit = ViT(num_classes=num_classes, in_chans=64, image_size=side, patch_size=patch_size, **vit_kwargs)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.vit.blocks

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        return self.vit(self.stem(x), return_attention)


@register_model
def hybrid_seed003(*, num_classes: int, in_chans: int, image_size: int,
                   patch_size: Optional[int] = None) -> ConvStemViT:
    """Seed 003's hybrid: MNIST-example convs (32, 64, pool) + its ViT over the map (2x2 patches by default)."""
    return ConvStemViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size, patch_size=patch_size,
                       **SEED003)

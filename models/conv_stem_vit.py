"""Conv-stem ViT: pytorch/examples' MNIST convolutions, then a ViT over their feature map.

The stem (models/mnist_cnn.py: two unpadded 3x3 convs to 32 and 64 channels
and a 2x2 max-pool) turns a 28 px image into a 64x12x12 map (32 px: 14x14);
the ViT (models/vit.py) reads that map as a 64-channel image, by default in
2x2 patches, so every position embedding is used.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from models.factory import register_model
from models.mnist_cnn import mnist_stem, mnist_stem_side
from models.vit import ViT


class ConvStemViT(nn.Module):
    """Conv stem -> ViT over the (64, s, s) map; takes ViT's keyword arguments except the input shape."""

    def __init__(self, *, num_classes: int, in_chans: int, image_size: int, patch_size: Optional[int] = None,
                 **vit_kwargs):
        super().__init__()
        side = mnist_stem_side(image_size)
        if patch_size is None:  # a 2x2 grid of patches over the map
            if side % 2:
                raise ValueError(f"feature map {side}x{side} has no default patch size; set model.patch_size")
            patch_size = side // 2
        self.stem = mnist_stem(in_chans)
        self.vit = ViT(num_classes=num_classes, in_chans=64, image_size=side, patch_size=patch_size,
                       image_what=f"conv stem's feature map (of {image_size} px images)", **vit_kwargs)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.vit.blocks

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits (B, num_classes); with ``return_attention``, also a list of (B, H, N+1, N+1) per block."""
        return self.vit(self.stem(x), return_attention)  # stem: (B, C, S, S) -> (B, 64, s, s)


@register_model(inputs=(28, 32))  # native input sizes, px
def convstem_vit_mini(*, num_classes: int, in_chans: int, image_size: int,
                      patch_size: Optional[int] = None) -> ConvStemViT:
    """MNIST-example conv stem (32, 64, pool) + vit_mini_patchnorm's ViT over the map (2x2 patches by default)."""
    return ConvStemViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size, patch_size=patch_size,
                       patch_norm=True, embed_dim=128, depth=6, num_heads=4, dim_head=64, mlp_ratio=2.0,
                       qkv_bias=False, dropout=0.1, attn_dropout=0.1, emb_dropout=0.1, drop_path=0.0)

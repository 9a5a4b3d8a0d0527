"""DeepViT (Zhou et al., "DeepViT: Towards Deeper Vision Transformer"): a ViT with re-attention.

Re-attention mixes each block's per-head softmax maps across heads with a
learned H x H matrix Theta, then applies a LayerNorm over the head axis,
before the maps weight the values. Everything else is the ViT of
models/vit.py (patch embedding, class token, pre-norm blocks, head).
Initialised as in vit-pytorch: Theta ~ N(0, 1).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from models.factory import register_model
from models.vit import Attention, ViT, mini_patch_size


class ReAttention(Attention):
    """Attention whose (B, H, N, N) maps are mixed across heads (Theta, then LayerNorm over heads)."""

    maps_on_cpu = None  # no choice: the mixing needs the maps written out everywhere

    def __init__(self, dim: int, num_heads: int, **kwargs):
        super().__init__(dim, num_heads, **kwargs)
        self.reattn_weights = nn.Parameter(torch.randn(num_heads, num_heads))  # Theta: (H, H)
        self.reattn_norm = nn.LayerNorm(num_heads)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """The output, and the per-head softmax maps before head mixing if asked (else None)."""
        q, k, v = self.split_heads(x)
        attn = self.softmax_maps(q, k)  # (B, H, N, N)
        mixed = torch.einsum("bhij,hg->bgij", self.attn_drop(attn), self.reattn_weights)  # (B, H, N, N)
        mixed = self.reattn_norm(mixed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LayerNorm over the head axis
        return self.merge_heads(mixed @ v), (attn if return_attention else None)


class DeepViT(ViT):
    """ViT whose blocks use re-attention; takes ViT's keyword arguments."""

    def __init__(self, **vit_kwargs):
        super().__init__(attn_layer=ReAttention, **vit_kwargs)


@register_model
def deepvit(*, num_classes: int, in_chans: int, image_size: int, patch_size: int = 4, embed_dim: int = 192,
            depth: int = 9, num_heads: int = 12, mlp_ratio: float = 2.0, qkv_bias: bool = True,
            dropout: float = 0.0, attn_dropout: float = 0.0, drop_path: float = 0.1,
            emb_dropout: Optional[float] = None, dim_head: Optional[int] = None,
            patch_norm: bool = False) -> DeepViT:
    """DeepViT with every ViT knob open, for sweeps (the defaults of ``vit``, with re-attention)."""
    return DeepViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size, patch_size=patch_size,
                   embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                   dropout=dropout, attn_dropout=attn_dropout, drop_path=drop_path, emb_dropout=emb_dropout,
                   dim_head=dim_head, patch_norm=patch_norm)


@register_model(inputs=(28, 32))  # native input sizes, px
def deepvit_mini_patchnorm(*, num_classes: int, in_chans: int, image_size: int,
                           patch_size: Optional[int] = None) -> DeepViT:
    """vit_mini_patchnorm with re-attention (+24 params per block); patch 7 at 28 px, 4 at 32 px."""
    return DeepViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                   patch_size=mini_patch_size(image_size, patch_size), patch_norm=True, embed_dim=128, depth=6,
                   num_heads=4, dim_head=64, mlp_ratio=2.0, qkv_bias=False, dropout=0.1, attn_dropout=0.1,
                   emb_dropout=0.1, drop_path=0.0)

"""Vision Transformer (Dosovitskiy et al.), sized for small images.

Conv patch embedding, class token, learned position embedding, pre-norm blocks
(multi-head self-attention + GELU MLP, each residual with DropPath), final
LayerNorm, linear head on the class token. Attention runs through
``scaled_dot_product_attention`` unless the weights are requested.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample, rescaling the kept ones."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool, attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, C/H)
        drop = self.attn_drop if self.training else 0.0
        if return_attention:
            attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, N)
            attn = attn.softmax(dim=-1)
            out = F.dropout(attn, drop, self.training) @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, H, N, C/H)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))  # (B, N, C)
        return out, attn


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, qkv_bias: bool, dropout: float,
                 attn_dropout: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_dropout, proj_drop=dropout)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        y, attn = self.attn(self.norm1(x), return_attention)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn


class ViT(nn.Module):
    """Patch embedding + class token + pre-norm transformer blocks. Every knob open, for sweeps."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        image_size: int,
        patch_size: int = 4,
        embed_dim: int = 192,
        depth: int = 9,
        num_heads: int = 12,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.1,
    ):
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} does not divide image size {image_size}")
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide embed_dim={embed_dim}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        for key, p in (("dropout", dropout), ("attn_dropout", attn_dropout), ("drop_path", drop_path)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {p}")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(dropout)
        rates = torch.linspace(0, drop_path, depth).tolist()  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, dropout=dropout,
                  attn_dropout=attn_dropout, drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits (B, num_classes); with ``return_attention``, also a list of (B, H, N+1, N+1) per block."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N+1, D)
        x = self.pos_drop(x + self.pos_embed)
        maps = []
        for block in self.blocks:
            x, attn = block(x, return_attention)
            maps.append(attn)
        logits = self.head(self.norm(x)[:, 0])  # class token
        return (logits, maps) if return_attention else logits


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# Every knob open, for sweeps; the class's signature is the schema.
vit = register_model(ViT, name="vit")


@register_model
def vit_cifar10_patch2_input32(*, num_classes: int, in_chans: int, image_size: int,
                               drop_path: float = 0.1) -> ViT:
    """Seed 001: patch 2, dim 192, depth 9, 12 heads, MLP x2, qkv bias, DropPath (2,727,562 params)."""
    return ViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size, patch_size=2, embed_dim=192,
               depth=9, num_heads=12, mlp_ratio=2.0, qkv_bias=True, drop_path=drop_path)


@register_model
def vit_seed002(*, num_classes: int, in_chans: int, image_size: int, dropout: float = 0.1) -> ViT:
    """Seed 002: patch 4, dim 128, depth 6, 4 heads, MLP x4, dropout 0.1 (1,205,898 params)."""
    return ViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size, patch_size=4, embed_dim=128,
               depth=6, num_heads=4, mlp_ratio=4.0, qkv_bias=True, dropout=dropout, attn_dropout=dropout,
               drop_path=0.0)

"""Vision Transformer (Dosovitskiy et al.), sized for small images.

Patch embedding, class token, learned position embedding, pre-norm blocks
(multi-head self-attention + GELU MLP, each residual branch with stochastic
depth at a rate growing linearly with depth), final LayerNorm, linear head on
the class token. Attention runs through ``F.scaled_dot_product_attention``
unless the weights are requested, or dropped out on the CPU (models/attention.py).

Two options follow lucidrains' vit-pytorch: ``patch_norm`` (LayerNorm on the
flattened patch, linear, LayerNorm; instead of one strided conv) and
``dim_head`` (a per-head width independent of ``embed_dim``).
DeepViT (models/deepvit.py) reuses these pieces with another attention.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torchvision.ops import StochasticDepth

from models.attention import attend, softmax_maps
from models.factory import register_model
from models.shapes import patch_problem


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, D) tokens, N = (H/p)(W/p).

    Plain: one p x p conv with stride p (timm). ``norm``: vit-pytorch's
    LayerNorm(p*p*C) -> Linear -> LayerNorm(D) over each flattened patch.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int, *, norm: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.norm = norm
        if norm:
            patch_dim = in_chans * patch_size * patch_size
            self.proj = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        else:
            self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.norm:
            return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        b, c, h, w = x.shape
        p = self.patch_size
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
        return self.proj(patches.reshape(b, (h // p) * (w // p), p * p * c))  # (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention: (B, N, D) -> (B, N, D), heads of width ``dim_head``."""

    maps_on_cpu = True  # models.attention.attend: the weights written out when dropping on the CPU

    def __init__(self, dim: int, num_heads: int, *, dim_head: int, qkv_bias: bool, attn_drop: float,
                 proj_drop: float):
        super().__init__()
        self.num_heads, self.dim_head = num_heads, dim_head
        inner = num_heads * dim_head
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.dim_head).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)  # q, k, v: each (B, H, N, Dh)

    def softmax_maps(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return softmax_maps(q, k)  # (B, H, N, N), rows sum to 1

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = out.shape
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, -1)))  # (B, H, N, Dh) -> (B, N, D)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """The output, and the (B, H, N, N) softmax maps if asked (else None)."""
        q, k, v = self.split_heads(x)
        if return_attention:
            attn = self.softmax_maps(q, k)
            out = self.attn_drop(attn) @ v
        else:
            attn = None
            out = attend(q, k, v, self.attn_drop, maps_on_cpu=self.maps_on_cpu)
        return self.merge_heads(out), attn


class Block(nn.Module):
    """Pre-norm block: x + sd(attn(norm1(x))), then x + sd(mlp(norm2(x))), sd = row-wise stochastic depth."""

    def __init__(self, dim: int, num_heads: int, *, dim_head: int, mlp_ratio: float, qkv_bias: bool, dropout: float,
                 attn_dropout: float, drop_path: float, attn_layer: type[Attention] = Attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn_layer(dim, num_heads, dim_head=dim_head, qkv_bias=qkv_bias, attn_drop=attn_dropout,
                               proj_drop=dropout)
        self.drop_path = StochasticDepth(drop_path, "row")  # stateless: one module serves both branches
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        y, attn = self.attn(self.norm1(x), return_attention)
        x = x + self.drop_path(y)  # (B, N, D)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn


class ViT(nn.Module):
    """Patch embedding + class token + pre-norm transformer blocks + linear head on the class token."""

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
        emb_dropout: Optional[float] = None,
        dim_head: Optional[int] = None,
        patch_norm: bool = False,
        attn_layer: type[Attention] = Attention,
        image_what: str = "image",  # what the patches cover, for the error: a conv stem's map in the hybrid
    ):
        super().__init__()
        problem = patch_problem(patch_size, image_size, what=image_what)
        if problem:
            raise ValueError(problem)
        if num_heads < 1 or (dim_head is None and embed_dim % num_heads):
            raise ValueError(f"num_heads={num_heads} does not divide embed_dim={embed_dim} (or set dim_head)")
        if dim_head is not None and dim_head < 1:
            raise ValueError(f"dim_head must be at least 1, got {dim_head}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be at least 1, got {embed_dim}")
        if int(embed_dim * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio must give an MLP at least 1 wide (embed_dim * mlp_ratio >= 1), got {mlp_ratio}")
        emb_dropout = dropout if emb_dropout is None else emb_dropout
        for key, p in (("dropout", dropout), ("attn_dropout", attn_dropout), ("drop_path", drop_path),
                       ("emb_dropout", emb_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {p}")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, norm=patch_norm)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(emb_dropout)
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, dim_head=dim_head or embed_dim // num_heads, mlp_ratio=mlp_ratio,
                  qkv_bias=qkv_bias, dropout=dropout, attn_dropout=attn_dropout, drop_path=r,
                  attn_layer=attn_layer) for r in rates)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits (B, num_classes); with ``return_attention``, also a list of (B, H, N+1, N+1) per block."""
        x = self.patch_embed(x)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N+1, D)
        x = self.pos_drop(x + self.pos_embed)
        maps = []
        for block in self.blocks:
            x, attn = block(x, return_attention)
            maps.append(attn)
        logits = self.head(self.norm(x)[:, 0])  # class token -> (B, num_classes)
        return (logits, maps) if return_attention else logits


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# The patch-normed "mini" ViTs' patch per input size: 16 tokens at 28 px, 64 at 32 px.
MINI_PATCH_SIZE = {28: 7, 32: 4}


def mini_patch_size(image_size: int, patch_size: Optional[int]) -> int:
    """``patch_size`` if set, else the default for this input size (a ValueError for other sizes)."""
    if patch_size is not None:
        return patch_size
    if image_size not in MINI_PATCH_SIZE:
        raise ValueError(f"no default patch size for {image_size} px inputs (defaults: 7 at 28 px, 4 at 32 px); "
                         f"set model.patch_size")
    return MINI_PATCH_SIZE[image_size]


@register_model
def vit(*, num_classes: int, in_chans: int, image_size: int, patch_size: int = 4, embed_dim: int = 192,
        depth: int = 9, num_heads: int = 12, mlp_ratio: float = 2.0, qkv_bias: bool = True, dropout: float = 0.0,
        attn_dropout: float = 0.0, drop_path: float = 0.1, emb_dropout: Optional[float] = None,
        dim_head: Optional[int] = None, patch_norm: bool = False) -> ViT:
    """ViT with every knob open, for sweeps (emb_dropout defaults to dropout, dim_head to embed_dim/num_heads)."""
    return ViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size, patch_size=patch_size,
               embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
               dropout=dropout, attn_dropout=attn_dropout, drop_path=drop_path, emb_dropout=emb_dropout,
               dim_head=dim_head, patch_norm=patch_norm)


@register_model
def vit_tiny_patch2_32(*, num_classes: int, in_chans: int, image_size: int, drop_path: float = 0.1) -> ViT:
    """ViT, patch 2, dim 192, depth 9, 12 heads, MLP x2, qkv bias, stochastic depth (2,727,562 params on CIFAR-10)."""
    return ViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size, patch_size=2, embed_dim=192,
               depth=9, num_heads=12, mlp_ratio=2.0, qkv_bias=True, drop_path=drop_path)


@register_model
def vit_mini_patch4_32(*, num_classes: int, in_chans: int, image_size: int, dropout: float = 0.1) -> ViT:
    """ViT, patch 4, dim 128, depth 6, 4 heads, MLP x4, dropout 0.1 (1,205,898 params on CIFAR-10)."""
    return ViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size, patch_size=4, embed_dim=128,
               depth=6, num_heads=4, mlp_ratio=4.0, qkv_bias=True, dropout=dropout, attn_dropout=dropout,
               drop_path=0.0)


@register_model(inputs=(28, 32))  # native input sizes, px
def vit_mini_patchnorm(*, num_classes: int, in_chans: int, image_size: int, patch_size: Optional[int] = None) -> ViT:
    """vit-pytorch-style ViT: normed patches, dim 128, depth 6, 4x64 heads, MLP 256, dropout 0.1; patch 7@28, 4@32."""
    return ViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
               patch_size=mini_patch_size(image_size, patch_size), patch_norm=True, embed_dim=128, depth=6,
               num_heads=4, dim_head=64, mlp_ratio=2.0, qkv_bias=False, dropout=0.1, attn_dropout=0.1,
               emb_dropout=0.1, drop_path=0.0)


@register_model(default_dataset="imagenette")
def vit_mini_patch16_160(*, num_classes: int, in_chans: int, image_size: int, patch_size: int = 16) -> ViT:
    """ViT for 160 px: patch 16 (100 tokens), dim 128, depth 6, 8 heads, MLP x4, dropout 0.1, stochastic depth 0.1."""
    return ViT(num_classes=num_classes, in_chans=in_chans, image_size=image_size, patch_size=patch_size,
               embed_dim=128, depth=6, num_heads=8, mlp_ratio=4.0, qkv_bias=True, dropout=0.1, drop_path=0.1)

"""CNN+Transformer: the SimpleCNN's feature map read as a token sequence.

The CNN (models/simple_cnn.py) turns a (B, C, H, W) image into a
(B, D, H/4, W/4) map; its h*w cells become tokens of width D (64 tokens at
32 px), get a sinusoidal positional encoding and dropout, pass through
post-norm transformer encoder blocks and a final LayerNorm, are folded back
into a map and classified by the same head (global average pool + linear) as
the plain CNN.

The encoder block is the post-norm layer of "Attention Is All You Need"
written out (``nn.TransformerEncoderLayer``'s computation, parameter count and
initialisation), so the attention maps come from the modules that compute the
logits. Named sizes: 2 heads, feed-forward 128, dropout 0.1, varying depth and,
for huge, the CNN width.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention import attend, softmax_maps
from models.factory import register_model
from models.simple_cnn import CONV_LAYERS, ConvBackbone, PredictionHead, check_feature_map


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sin/cos encoding of "Attention Is All You Need", added to (B, N, D) tokens."""

    def __init__(self, dim: int, num_tokens: int):
        super().__init__()
        position = torch.arange(num_tokens).unsqueeze(1)  # (N, 1)
        freq = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))  # (ceil(D/2),)
        pe = torch.zeros(num_tokens, dim)
        pe[:, 0::2] = torch.sin(position * freq)
        pe[:, 1::2] = torch.cos(position * freq[: dim // 2])
        self.register_buffer("pe", pe.unsqueeze(0), persistent=False)  # (1, N, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters and initialisation.

    A fused (D -> 3D) input projection with bias and a (D -> D) output projection;
    dropout on the attention weights.
    """

    maps_on_cpu = True  # models.attention.attend: the weights written out when dropping on the CPU

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)
        # nn.MultiheadAttention._reset_parameters: xavier on the fused projection, zero biases;
        # the output projection's weight keeps nn.Linear's default.
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """(B, N, D) -> (B, N, D), and the (B, H, N, N) softmax maps if asked (else None)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if return_attention:
            attn = softmax_maps(q, k)  # (B, H, N, N)
            out = self.attn_drop(attn) @ v
        else:
            attn = None
            out = attend(q, k, v, self.attn_drop, maps_on_cpu=self.maps_on_cpu)
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), attn  # out: (B, H, N, Dh) -> (B, N, D)


class PostNormBlock(nn.Module):
    """x = norm1(x + drop1(attn(x))); x = norm2(x + drop2(ff(x))), ff = linear2(drop(relu(linear1(x))))."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.attn = SelfAttention(dim, num_heads, dropout)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.drop = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.drop2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        y, attn = self.attn(x, return_attention)
        x = self.norm1(x + self.drop1(y))  # (B, N, D)
        ff = self.linear2(self.drop(F.relu(self.linear1(x))))
        x = self.norm2(x + self.drop2(ff))
        return x, attn


class CNNTransformer(nn.Module):
    """CNN feature map -> tokens -> post-norm transformer encoder -> GAP + linear head."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        image_size: int,
        cnn_channels: int = 64,
        num_layers: int = 3,
        num_heads: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        for key, value in (("cnn_channels", cnn_channels), ("num_layers", num_layers),
                           ("num_heads", num_heads), ("dim_feedforward", dim_feedforward)):
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if cnn_channels % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide the token width cnn_channels={cnn_channels}")
        self.cnn = ConvBackbone(in_chans=in_chans, layers=CONV_LAYERS[:-1] + ((cnn_channels, 1),))
        side = check_feature_map(image_size, self.cnn.reduction)
        dim = cnn_channels
        self.pos_encoding = SinusoidalPositionalEncoding(dim, side * side)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(PostNormBlock(dim, num_heads, dim_feedforward, dropout)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = PredictionHead(dim, num_classes)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits (B, num_classes); with ``return_attention``, also a list of (B, H, N, N) per block."""
        fmap = self.cnn(x)  # (B, D, h, w)
        b, d, h, w = fmap.shape
        tokens = self.dropout(self.pos_encoding(fmap.flatten(2).transpose(1, 2)))  # (B, N = h*w, D)
        maps = []
        for block in self.blocks:
            tokens, attn = block(tokens, return_attention)
            maps.append(attn)
        tokens = self.norm(tokens)  # (B, N, D)
        logits = self.head(tokens.transpose(1, 2).reshape(b, d, h, w))  # (B, num_classes)
        return (logits, maps) if return_attention else logits


@register_model
def cnn_transformer(*, num_classes: int, in_chans: int, image_size: int, cnn_channels: int = 64,
                    num_layers: int = 3, num_heads: int = 2, dim_feedforward: int = 128,
                    dropout: float = 0.1) -> CNNTransformer:
    """CNN+Transformer with every size knob open, for sweeps (defaults: cnn_tr_medium)."""
    return CNNTransformer(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                          cnn_channels=cnn_channels, num_layers=num_layers, num_heads=num_heads,
                          dim_feedforward=dim_feedforward, dropout=dropout)


# Named sizes: only dropout may be changed, so a config cannot silently alter what "medium" means.

@register_model
def cnn_tr_small(*, num_classes: int, in_chans: int, image_size: int, dropout: float = 0.1) -> CNNTransformer:
    """2 encoder blocks over the 64-channel CNN map, 2 heads, feed-forward 128."""
    return CNNTransformer(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                          cnn_channels=64, num_layers=2, num_heads=2, dim_feedforward=128, dropout=dropout)


@register_model
def cnn_tr_medium(*, num_classes: int, in_chans: int, image_size: int, dropout: float = 0.1) -> CNNTransformer:
    """3 encoder blocks over the 64-channel CNN map, 2 heads, feed-forward 128 (532,138 params on CIFAR-10)."""
    return CNNTransformer(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                          cnn_channels=64, num_layers=3, num_heads=2, dim_feedforward=128, dropout=dropout)


@register_model
def cnn_tr_large(*, num_classes: int, in_chans: int, image_size: int, dropout: float = 0.1) -> CNNTransformer:
    """4 encoder blocks over the 64-channel CNN map, 2 heads, feed-forward 128."""
    return CNNTransformer(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                          cnn_channels=64, num_layers=4, num_heads=2, dim_feedforward=128, dropout=dropout)


@register_model
def cnn_tr_huge(*, num_classes: int, in_chans: int, image_size: int, dropout: float = 0.1) -> CNNTransformer:
    """4 encoder blocks over a 256-channel CNN map, 2 heads, feed-forward 128."""
    return CNNTransformer(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                          cnn_channels=256, num_layers=4, num_heads=2, dim_feedforward=128, dropout=dropout)

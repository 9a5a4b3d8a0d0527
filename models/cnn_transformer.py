"""Seed 000's CNNTransformer: the SimpleCNN's feature map read as a token sequence.

The CNN turns a (B, C, H, W) image into a (B, D, H/4, W/4) map; its h*w cells
become tokens of width D (64 tokens on CIFAR), get a sinusoidal positional
encoding and dropout, pass through a post-norm ``nn.TransformerEncoder`` with a
final LayerNorm, are folded back into a map and classified by the same head
(global average pool + linear) as the plain CNN.

Named sizes follow the configs of the project seed 000 came from (2 heads,
feed-forward 128, dropout 0.1), varying only depth and, for huge, the CNN width.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.layers import Dropout
from models.registry import register_model
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


class CNNTransformer(nn.Module):
    """CNN feature map -> tokens -> transformer encoder -> head. Every size knob open, for sweeps."""

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
        self.dropout = Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        for enc in self.encoder.layers:  # the cheaper CPU dropout mask (models/layers.py); same p, no parameters
            enc.dropout, enc.dropout1, enc.dropout2 = Dropout(dropout), Dropout(dropout), Dropout(dropout)
        self.head = PredictionHead(dim, num_classes)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits (B, num_classes); with ``return_attention``, also a list of (B, H, N, N) per layer."""
        fmap = self.cnn(x)  # (B, D, h, w)
        b, d, h, w = fmap.shape
        tokens = self.dropout(self.pos_encoding(fmap.flatten(2).transpose(1, 2)))  # (B, h*w, D)
        if return_attention:
            tokens, maps = self._encode_with_attention(tokens)
        else:
            tokens = self.encoder(tokens)  # (B, h*w, D)
        logits = self.head(tokens.transpose(1, 2).reshape(b, d, h, w))  # (B, num_classes)
        return (logits, maps) if return_attention else logits

    def _encode_with_attention(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``self.encoder(tokens)`` step by step, asking each layer's attention for its per-head weights.

        Mirrors ``nn.TransformerEncoderLayer``'s post-norm forward with the same modules, so the
        logits are those of the fast path (which never returns weights).
        """
        maps = []
        for layer in self.encoder.layers:
            y, weights = layer.self_attn(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
            tokens = layer.norm1(tokens + layer.dropout1(y))
            ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(tokens))))
            tokens = layer.norm2(tokens + layer.dropout2(ff))
            maps.append(weights)  # (B, H, N, N)
        return self.encoder.norm(tokens), maps


# Every size knob open, for sweeps; the class's own signature is the schema. Defaults are CNN-TR-Medium.
cnn_transformer = register_model(CNNTransformer, name="cnn_transformer")


# Named sizes: only dropout may be changed, so a config cannot silently alter what "medium" means.
def _sized(num_layers: int, cnn_channels: int = 64):
    def build(*, num_classes: int, in_chans: int, image_size: int, dropout: float = 0.1) -> CNNTransformer:
        return CNNTransformer(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                              cnn_channels=cnn_channels, num_layers=num_layers, dropout=dropout)

    build.__doc__ = f"{num_layers} encoder layers over the {cnn_channels}-channel CNN map, 2 heads, feed-forward 128."
    return build


cnn_tr_small = register_model(_sized(2), name="cnn_tr_small")
cnn_tr_medium = register_model(_sized(3), name="cnn_tr_medium")  # seed 000's table: 532,138 parameters
cnn_tr_large = register_model(_sized(4), name="cnn_tr_large")
cnn_tr_huge = register_model(_sized(4, cnn_channels=256), name="cnn_tr_huge")

"""Scaled dot-product attention with dropout on its weights, computed the way that is fastest where it runs.

``F.scaled_dot_product_attention`` has fused kernels on the CPU only without dropout; with dropout in
training it falls back to its math path, which draws the dropout mask with one ``bernoulli_`` per weight.
There the weights are written out instead and ``drop`` (the attention's ``nn.Dropout``, which ``prepare``
replaces by the cheaper CPU mask, ``train/cpu_dropout.py``) masks them. The same computation: for
vit_mini_patch4_32's (128, 4, 65, 32) heads in fp32 on a 2-core Xeon, attention's forward and backward ran
1.72x faster (1.16x with a plain ``nn.Dropout``'s mask), and whole training steps 1.16x, cnn_tr_medium's 1.17x
(``python -m bench.ab --setting attention_maps``; BENCHMARKS.md).
Everywhere else (CUDA, evaluation, no dropout) SDPA runs, with its fused kernels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def softmax_maps(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)): (B, H, N, Dh) x2 -> (B, H, N, N), rows summing to 1, in q's dtype. The softmax
    runs in fp32 (under bf16 autocast too, as SDPA's math path does on the CPU)."""
    return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1, dtype=torch.float32).to(q.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, drop: nn.Dropout, *,
           maps_on_cpu: bool = True) -> torch.Tensor:
    """dropout(softmax(q k^T / sqrt(d))) v, (B, H, N, Dh) each -> (B, H, N, Dh). ``maps_on_cpu``: write the
    weights out on the CPU when dropout applies (False: always SDPA, for measuring the difference)."""
    dropping = drop.training and drop.p > 0
    if dropping and maps_on_cpu and q.device.type == "cpu":
        return drop(softmax_maps(q, k)) @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=drop.p if dropping else 0.0)

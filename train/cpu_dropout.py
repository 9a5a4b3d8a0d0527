"""A cheaper dropout mask for the CPU, swapped into a model from outside (``prepare``), never written into one.

On the CPU, ``nn.Dropout`` draws one random number per element (``bernoulli_``) and the generator is
the bottleneck of small ViTs' training steps. Here one 32-bit draw serves two elements: its low 16 bits
and its next 15 bits, each compared with p at that resolution (p = 0.1 is applied as 0.1000 +- 2e-5).
Same expectation (kept values scaled by 1 / (1 - p)), same seeding through ``torch.manual_seed``.
Measured with ``python -m bench.ab --setting cpu_dropout`` (BENCHMARKS.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Bool mask of ``shape``, each element False with probability p (to 1/32768)."""
    n = shape.numel()
    bits = torch.empty((n + 1) // 2, dtype=torch.int32).random_()  # 31 uniform bits each
    low = (bits & 0xFFFF) >= round(p * 65536)
    high = (bits >> 16) >= round(p * 32768)
    return torch.cat([low, high])[:n].view(shape)


class CPUDropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, repr and state) with the cheaper mask on CPU tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.inplace or x.device.type != "cpu" or self.p >= 1.0:
            return super().forward(x)
        return x * (keep_mask(x.shape, self.p).to(x.dtype) * (1.0 / (1.0 - self.p)))


def use_cpu_dropout(model: nn.Module) -> int:
    """Replace every plain ``nn.Dropout`` in ``model`` by a ``CPUDropout`` with the same p; returns how many."""
    swapped = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, CPUDropout(child.p, child.inplace).train(child.training))
                swapped += 1
    return swapped

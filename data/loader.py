"""Batches from in-memory uint8 tensors: shuffle, augment and normalise on the data's device."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from data.augment import Transform, normalize, random_erasing


class TensorLoader:
    """Iterates (images float32 normalised (B, C, S, S), labels int64 (B,)) over (x, y) on one device.

    Every op is a batched tensor op, so on a GPU the whole data path stays there.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: Optional[Transform] = None,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: Optional[torch.Generator] = None,
        channels_last: bool = False,
        erase_prob: float = 0.0,
    ):
        assert x.dtype == torch.uint8 and x.ndim == 4 and len(x) == len(y)
        self.x, self.y = x, y
        self.batch_size = batch_size
        # On the data's device once, so no per-batch host-to-device copy of the statistics.
        self.mean = torch.tensor(mean, dtype=torch.float32, device=x.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=x.device)
        self.transform, self.shuffle, self.drop_last = transform, shuffle, drop_last
        self.generator = generator
        self.channels_last = channels_last
        self.erase_prob = erase_prob

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, device=self.x.device, generator=self.generator) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            if order is None:
                xb, yb = self.x[sl], self.y[sl]
            else:
                idx = order[sl]
                xb, yb = self.x[idx], self.y[idx]
            if self.transform is not None:
                xb = self.transform(xb, self.generator)
            xb = normalize(xb, self.mean, self.std)
            if self.erase_prob > 0:
                xb = random_erasing(xb, self.erase_prob, self.generator)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, yb

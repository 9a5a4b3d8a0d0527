"""Batches from in-memory uint8 tensors: shuffle, augment and normalise on the data's device."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from data.augment import Transform, normalize, random_erasing


class TensorLoader:
    """Iterates (images float32 normalised (B, C, S, S), labels int64 (B,)) over (x, y) on one device.

    Every op is a batched tensor op, so on a GPU the whole data path stays there. All randomness (the
    epoch's order, the augmentation) comes from ``generator``, and the loader can stop and resume
    anywhere like torchdata's ``StatefulDataLoader``: ``state_dict()`` taken after k batches of an epoch,
    loaded into a fresh loader, makes its next iteration yield exactly batches k+1... of that epoch.
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
        self._epoch_start: Optional[torch.Tensor] = None  # generator state before this epoch's order
        self._position = 0  # batches yielded in the current epoch
        self._resume: Optional[dict] = None

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def position(self) -> int:
        """Batches yielded so far in the current (or just finished) epoch."""
        return self._position

    @property
    def next_start(self) -> int:
        """The batch the next iteration starts at: 0, or where a loaded state left the epoch."""
        return self._resume["position"] if self._resume else 0

    def state_dict(self) -> dict:
        """Where the current epoch stands: resume from here with ``load_state_dict``. Between epochs
        (after a full pass, or before the first) it says to start a new epoch."""
        if self._resume is not None:  # loaded and not yet iterated: still where the loaded state says
            return dict(self._resume)
        mid_epoch = self._epoch_start is not None and 0 < self._position < len(self)
        return {
            "position": self._position if mid_epoch else 0,
            "epoch_start": self._epoch_start if mid_epoch else None,
            "generator": self.generator.get_state() if self.generator is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])
        self._resume = state if state.get("position") else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        start, resume, self._resume = 0, self._resume, None
        gen = self.generator
        if resume is not None:  # the interrupted epoch: its order from its start state, then the rest of it
            start = resume["position"]
            if gen is not None:
                gen.set_state(resume["epoch_start"])
        self._epoch_start = gen.get_state() if gen is not None else None
        order = torch.randperm(n, device=self.x.device, generator=gen) if self.shuffle else None
        if resume is not None and gen is not None:
            gen.set_state(resume["generator"])
        self._position = start
        for i in range(start, len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            if order is None:
                xb, yb = self.x[sl], self.y[sl]
            else:
                idx = order[sl]
                xb, yb = self.x[idx], self.y[idx]
            if self.transform is not None:
                xb = self.transform(xb, gen)
            xb = normalize(xb, self.mean, self.std)
            if self.erase_prob > 0:
                xb = random_erasing(xb, self.erase_prob, gen)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            self._position = i + 1
            yield xb, yb

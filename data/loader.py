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
        shard: Optional[tuple[int, int]] = None,
        aug_generator: Optional[torch.Generator] = None,
    ):
        assert x.dtype == torch.uint8 and x.ndim == 4 and len(x) == len(y)
        self.x, self.y = x, y
        self.batch_size = batch_size
        # Several processes (train/distributed.py): ``shard`` = (rank, world size). ``x, y`` are then the whole
        # set on the host, ``generator`` (same seed everywhere) draws each epoch's order of it, and this
        # process copies only its slice of every global batch to ``generator``'s device, once per epoch;
        # ``aug_generator`` (seeded per process) draws the augmentation.
        self.shard = shard
        self.rank, self.world = shard or (0, 1)
        assert shard is None or (shuffle and drop_last and generator is not None), "a shard is of shuffled full batches"
        device = generator.device if shard is not None else x.device
        # On the data's device once, so no per-batch host-to-device copy of the statistics.
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(std, dtype=torch.float32, device=device)
        self.transform, self.shuffle, self.drop_last = transform, shuffle, drop_last
        self.generator = generator
        self.aug_generator = aug_generator if aug_generator is not None else generator
        self.channels_last = channels_last
        self.erase_prob = erase_prob
        self._epoch_start: Optional[torch.Tensor] = None  # generator state before this epoch's order
        self._position = 0  # batches yielded in the current epoch
        self._resume: Optional[dict] = None

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size * self.world  # the global batch
        return n // b if self.drop_last else -(-n // b)

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
            **({"aug_generator": self.aug_generator.get_state()} if self._separate_aug else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])
        if self._separate_aug and state.get("aug_generator") is not None:
            self.aug_generator.set_state(state["aug_generator"])
        self._resume = state if state.get("position") else None

    @property
    def _separate_aug(self) -> bool:
        return self.aug_generator is not None and self.aug_generator is not self.generator

    def _epoch_data(self, order: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(x, y, order) this process iterates this epoch: the whole set and its order, or (a shard) this
        process's slice of every global batch, in order, copied to its device."""
        if self.shard is None:
            return self.x, self.y, order
        steps, b = len(self), self.batch_size
        mine = order[: steps * b * self.world].view(steps, self.world, b)[:, self.rank].reshape(-1).cpu()
        device = self.generator.device
        pin = device.type == "cuda"
        x, y = self.x[mine], self.y[mine]
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=pin), y.to(device, non_blocking=pin), None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        start, resume, self._resume = 0, self._resume, None
        gen = self.generator
        if resume is not None:  # the interrupted epoch: its order from its start state, then the rest of it
            start = resume["position"]
            if gen is not None:
                gen.set_state(resume["epoch_start"])
        self._epoch_start = gen.get_state() if gen is not None else None
        device = gen.device if self.shard is not None else self.x.device
        order = torch.randperm(n, device=device, generator=gen) if self.shuffle else None
        if resume is not None and gen is not None:
            gen.set_state(resume["generator"])
            if self._separate_aug:
                self.aug_generator.set_state(resume["aug_generator"])
        x, y, order = self._epoch_data(order)
        n, aug = len(x), self.aug_generator
        self._position = start
        for i in range(start, len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            if order is None:
                xb, yb = x[sl], y[sl]
            else:
                idx = order[sl]
                xb, yb = x[idx], y[idx]
            if self.transform is not None:
                xb = self.transform(xb, aug)
            xb = normalize(xb, self.mean, self.std)
            if self.erase_prob > 0:
                xb = random_erasing(xb, self.erase_prob, aug)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            self._position = i + 1
            yield xb, yb

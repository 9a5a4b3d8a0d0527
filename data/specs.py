"""What a dataset is (``DatasetSpec``), what a loaded one holds (``ImageData``), and what every decoded split
must be (``check_split``): images uint8 (N, C, H, W), labels int64 (N,) in range.

The datasets themselves are registered in ``data.catalog``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from core.errors import UserError
from data.problems import REFETCH, describe

Split = tuple[torch.Tensor, torch.Tensor]  # images uint8 (N, C, H, W), labels int64 (N,)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # see data.augment.train_transform
    find: Callable[[Path], Optional[list[Path]]]  # source files under root, or None if incomplete
    decode: Callable[[list[Path]], tuple[Split, Split]]
    download: Callable[[Path], None]
    expected: Callable[[Path], str]  # human description of the files looked for
    classes: tuple[str, ...] = ()  # class names by label index

    def class_name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else str(label)


@dataclass
class ImageData:
    spec: DatasetSpec
    train: Split
    val: Split

    def to(self, device: torch.device) -> "ImageData":
        move = lambda s: (s[0].to(device), s[1].to(device))  # noqa: E731
        return ImageData(self.spec, move(self.train), move(self.val))

    def fingerprint(self) -> dict[str, dict[str, object]]:
        """Each split's size and a hash of its labels, image shape and every k-th image (256 of them): what a
        checkpoint records so that a resume on other files (train and test swapped, MNIST where Fashion-MNIST
        was) is told, at a cost of milliseconds (a full hash of Imagenette's 0.7 GB would take seconds)."""
        out: dict[str, dict[str, object]] = {}
        for split, (x, y) in (("train", self.train), ("val", self.val)):
            h = hashlib.blake2b(digest_size=8)
            h.update(f"{self.spec.name}:{tuple(x.shape)}:{x.dtype}".encode())
            h.update(y.detach().cpu().contiguous().numpy().tobytes())
            h.update(x[::max(1, len(x) // 256)].detach().cpu().contiguous().numpy().tobytes())
            out[split] = {"images": len(x), "hash": h.hexdigest()}
        return out


def check_split(x, y, image_shape: tuple[int, int, int], num_classes: int) -> Optional[str]:
    """What is wrong with a decoded split (None: nothing): images uint8 (N, *image_shape), labels int64 (N,)
    in [0, num_classes), N >= 1. Checked on every decode and every cache read."""
    want = image_shape
    if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4 and tuple(x.shape[1:]) == want):
        return f"images are {describe(x)}, expected uint8 (N, {', '.join(map(str, want))})"
    if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.ndim == 1):
        return f"labels are {describe(y)}, expected int64 (N,)"
    if len(x) != len(y):
        return f"{len(x)} images but {len(y)} labels"
    if len(y) == 0:
        return "no images"
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        return f"labels span {low}..{high}, expected 0..{num_classes - 1}"
    return None


def decode_checked(spec: DatasetSpec, files: list[Path]) -> tuple[Split, Split]:
    """``spec.decode(files)``, each split checked against ``spec``: the format readers check their files;
    this is the last line for all datasets."""
    train, val = spec.decode(files)
    for split, (x, y) in (("train", train), ("val", val)):
        problem = check_split(x, y, (spec.in_chans, spec.image_size, spec.image_size), spec.num_classes)
        if problem:
            raise UserError(f"data.root: {spec.name} {split} split: {problem}; {REFETCH}")
    return train, val

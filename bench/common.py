"""What the measuring tools share: batch streams, synthetic data, a bench config, the matmul peak,
training FLOPs, and the checks of their command lines."""
from __future__ import annotations

import argparse
import time
import typing
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn

from config import Config, TrainConfig, from_dict
from core.errors import UserError
from data import ImageData, get_spec
from models import MODELS, list_models
from models.measure import sync

COMPILE_MODES = typing.get_args(typing.get_type_hints(TrainConfig)["compile"])  # train.compile's choices
PRECISIONS = typing.get_args(typing.get_type_hints(TrainConfig)["precision"])  # train.precision's choices


class Take:
    """The first ``n`` batches of an endless stream, as a loader ``train_one_epoch`` can run."""

    def __init__(self, stream: Iterator, n: int):
        self.stream, self.n = stream, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield next(self.stream)


def endless(loader) -> Iterator:
    while True:
        yield from loader


def synthetic_data(name: str, n: int, seed: int = 0) -> ImageData:
    """``n`` random uint8 images (and labels) per split, in the dataset's shape: throughput ignores the pixels."""
    spec = get_spec(name)
    g = torch.Generator().manual_seed(seed)
    shape = (n, spec.in_chans, spec.image_size, spec.image_size)

    def split():
        return (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
                torch.randint(0, spec.num_classes, (n,), generator=g))

    return ImageData(spec, split(), split())


def model_names(text: str, *, allow_all: bool = False) -> list[str]:
    """``a,b`` (or ``all``) -> checked model names; an unknown one is a ``UserError`` listing the choices."""
    if allow_all and text == "all":
        return list_models()
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"--models: got {text!r}; expected comma-separated model names")
    for n in names:
        MODELS.get(n)
    return names


def dataset_for(model: str, override: Optional[str]) -> str:
    """``--dataset`` if given (checked), else the model's own default dataset, else CIFAR-10."""
    name = override or MODELS.meta(model).get("default_dataset", "cifar10")
    return get_spec(name).name


def bench_config(model: str, dataset: str, *, root: Optional[str] = None, **train: Any) -> Config:
    """A config for a benchmark: one epoch, no progress-bar syncs, ``train`` keys on top (checked as usual)."""
    return from_dict({"model": {"name": model},
                      "data": {"name": dataset, "root": root or "./datasets", "download": False},
                      "train": {"epochs": 1, "log_every": 10 ** 9, **train}})


def check_output(flag: str, path: Optional[str]) -> None:
    """Fail before the measuring starts, not after, when an output file cannot be written."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {path}: is a directory; expected a file name")
    if not p.parent.is_dir():
        raise UserError(f"{flag} {path}: folder {p.parent} does not exist")


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def matmul_peak(device: torch.device, cpu_dtype: torch.dtype = torch.float32,
                size: Optional[int] = None) -> tuple[float, str]:
    """FLOP/s of a large square matmul: on CPU in the loop's precision, bf16 on CUDA (the fastest repeat)."""
    cuda = device.type == "cuda"
    n = size or (8192 if cuda else 2048)
    dtype = torch.bfloat16 if cuda else cpu_dtype
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(13 if cuda else 11):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i >= (3 if cuda else 1):  # warm-up: allocator, kernel choice, clocks
            times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times), f"{n}x{n} {str(dtype).removeprefix('torch.')} matmul, best of repeats"


def train_flops_per_image(model: nn.Module, spec, device: torch.device) -> float:
    """Training FLOPs per image (forward and backward, attention included), counted as results.json counts
    them (``models.measure.flops_per_image``), so the benchmark and the comparison agree. ``device`` is
    unused: the count runs on a CPU copy."""
    from models.measure import flops_per_image

    return float(flops_per_image(model, spec).training)

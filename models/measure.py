"""What a model costs, measured the same way by training, the comparison and the benchmarks:
torchinfo summary, inference latency, and the one device sync they all time with."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn as nn


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock brackets it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class ModelInfo:
    params: int
    mult_adds: int  # per image, as torchinfo counts them (convolutions and linears; not attention matmuls)
    summary: str


def describe(model: nn.Module, spec, depth: int = 4) -> ModelInfo:
    """torchinfo summary for one image of the dataset's shape."""
    import torchinfo

    device = next(model.parameters()).device
    stats = torchinfo.summary(model, input_size=(1, spec.in_chans, spec.image_size, spec.image_size),
                              col_names=("output_size", "num_params", "mult_adds"), depth=depth,
                              device=device, mode="eval", verbose=0)
    return ModelInfo(stats.total_params, int(stats.total_mult_adds), str(stats))


@torch.inference_mode()
def latency_ms(model: nn.Module, spec, device: torch.device, batch: int, *, channels_last: bool = False,
               autocast: Callable[[], ContextManager] = contextlib.nullcontext, max_repeats: int = 30,
               budget_s: float = 1.0) -> float:
    """Median milliseconds per image of inference at this batch size (``autocast``: e.g. a run's
    ``Precision.autocast``).

    Up to three warm-up passes (fewer once they take ``budget_s``), then timed passes with the
    device synchronised around each, as many as fit in ``budget_s`` (at least 3, at most
    ``max_repeats``). The model is left in eval mode.
    """
    model.eval()
    x = torch.randn(batch, spec.in_chans, spec.image_size, spec.image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def timed() -> float:
        sync(device)
        t0 = time.perf_counter()
        with autocast():
            model(x)
        sync(device)
        return time.perf_counter() - t0

    warm = 0.0
    for _ in range(3):  # kernel selection (cudnn.benchmark), allocator and caches
        warm += timed()
        if warm > budget_s:
            break
    times: list[float] = []
    while len(times) < max(3, max_repeats):
        times.append(timed())
        if len(times) >= 3 and sum(times) > budget_s:
            break
    return 1000 * statistics.median(times) / batch

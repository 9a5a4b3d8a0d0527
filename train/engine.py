"""The shared training loop: ``train_one_epoch``, ``evaluate`` (DeiT's engine.py split).

Loss and correct counts are accumulated on the device; the host syncs only
every ``log_every`` steps (to refresh the progress bar and catch a non-finite
loss early) and once at the end of each epoch.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from tqdm import tqdm


class NonFiniteLoss(RuntimeError):
    pass


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls in hardware, where bf16 autocast pays off for training."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@dataclass
class Precision:
    """Autocast settings for one device: dtype None means plain fp32."""

    device_type: str
    dtype: Optional[torch.dtype] = None

    @classmethod
    def for_device(cls, device: torch.device, amp: bool) -> "Precision":
        if device.type == "cuda" and amp:
            return cls("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        if device.type == "cpu" and amp and cpu_has_native_bf16():
            return cls("cpu", torch.bfloat16)  # 1.35-2.25x faster training on an AMX CPU (BENCHMARKS.md)
        return cls(device.type)  # fp32: bf16 autocast is slower than fp32 on CPUs without bf16 units (AVX2)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def __str__(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(loader, desc: str, enabled: bool):
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not enabled)


def train_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, optimizer, scheduler, criterion,
               *, precision: Precision, scaler: Optional[torch.amp.GradScaler] = None,
               grad_clip: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, (unscale, clip,) optimizer and schedule step. Returns (logits, loss), not synced."""
    with precision.autocast():
        logits = model(images)
        loss = criterion(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    scheduler.step()
    return logits, loss


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    criterion: nn.Module,
    *,
    device: torch.device,
    precision: Precision,
    scaler: Optional[torch.amp.GradScaler] = None,
    grad_clip: Optional[float] = None,
    log_every: int = 50,
    progress: bool = False,
    desc: str = "train",
    mixer=None,
) -> dict:
    """One pass over ``loader``. With a ``mixer`` (MixUp/CutMix), the loss is taken against its soft
    targets and training accuracy counts a prediction as right when it names the dominant label."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    _sync(device)
    start = time.perf_counter()
    bar = _progress(loader, desc, progress)
    for step, (images, labels) in enumerate(bar, 1):
        targets = labels
        if mixer is not None:
            images, targets = mixer(images, labels)
            labels = targets.argmax(1)
        logits, loss = train_step(model, images, targets, optimizer, scheduler, criterion, precision=precision,
                                  scaler=scaler, grad_clip=grad_clip)
        n = labels.shape[0]
        seen += n
        loss_sum += loss.detach().float() * n
        correct += (logits.detach().argmax(1) == labels).sum()
        if step % log_every == 0:
            total = loss_sum.item()  # the only host sync inside the epoch
            _check_finite(total, step)
            bar.set_postfix(loss=f"{total / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
    _sync(device)
    elapsed = time.perf_counter() - start
    total = loss_sum.item()
    _check_finite(total, len(loader))
    return {
        "train_loss": total / max(1, seen),
        "train_acc": 100.0 * correct.item() / max(1, seen),
        "lr": optimizer.param_groups[0]["lr"],
        "train_time_s": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else float("nan"),
    }


def _check_finite(loss_sum: float, step: int) -> None:
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"training loss became {loss_sum} by step {step} of this epoch; "
                            f"try a lower train.lr, train.grad_clip, or train.warmup_epochs")


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    criterion: nn.Module,
    *,
    device: torch.device,
    precision: Precision,
    progress: bool = False,
    top5: bool = False,
) -> dict:
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    _sync(device)
    start = time.perf_counter()
    for images, labels in _progress(loader, "eval", progress):
        with precision.autocast():
            logits = model(images)
            loss = criterion(logits, labels)
        seen += labels.shape[0]
        loss_sum += loss.float() * labels.shape[0]
        correct += (logits.argmax(1) == labels).sum()
        if top5:
            k = min(5, logits.shape[1])
            correct5 += (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum()
    _sync(device)
    out = {
        "val_loss": loss_sum.item() / max(1, seen),
        "val_acc": 100.0 * correct.item() / max(1, seen),
        "eval_time_s": time.perf_counter() - start,
    }
    if top5:
        out["val_top5"] = 100.0 * correct5.item() / max(1, seen)
    return out


@torch.inference_mode()
def latency_ms(model: nn.Module, spec, device: torch.device, precision: Precision, batch: int,
               channels_last: bool = False, *, max_repeats: int = 30, budget_s: float = 1.0) -> float:
    """Median milliseconds per image of inference at this batch size (seed 003's measure).

    Up to three warm-up passes (fewer once they take ``budget_s``), then timed passes with the
    device synchronised around each, as many as fit in ``budget_s`` (at least 3, at most
    ``max_repeats``). The model is left in eval mode.
    """
    model.eval()
    x = torch.randn(batch, spec.in_chans, spec.image_size, spec.image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def timed() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with precision.autocast():
            model(x)
        _sync(device)
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

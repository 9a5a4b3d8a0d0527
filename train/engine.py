"""The shared training loop: ``train_step``, ``train_one_epoch``, ``evaluate`` (DeiT's engine.py split).

Loss and correct counts are accumulated on the device; the host syncs only every ``log_every``
steps (to refresh the progress bar and catch a non-finite loss early) and once at the end of each epoch.
"""
from __future__ import annotations

import math
import time
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from core.errors import RunFailed

from models.measure import sync
from train.setup import Setup


class NonFiniteLoss(RunFailed):
    """The training loss became NaN or infinite: the run diverged."""


def _progress(loader, desc: str, enabled: bool):
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not enabled)


def train_step(s: Setup, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, (unscale, clip,) optimizer and schedule step. Returns (logits, loss), not synced."""
    with s.precision.autocast():
        logits = s.model(images)
        loss = s.criterion(logits, targets)
    s.optimizer.zero_grad(set_to_none=True)
    if s.scaler is not None:
        s.scaler.scale(loss).backward()
        if s.grad_clip is not None:
            s.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.module.parameters(), s.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        loss.backward()
        if s.grad_clip is not None:
            nn.utils.clip_grad_norm_(s.module.parameters(), s.grad_clip)
        s.optimizer.step()
    s.scheduler.step()
    return logits, loss


def train_one_epoch(s: Setup, loader: Optional[Iterable] = None, *, log_every: int = 50, progress: bool = False,
                    desc: str = "train") -> dict:
    """One pass over ``loader`` (default: the setup's training loader).

    With MixUp/CutMix the loss is taken against the soft targets, and training accuracy counts a
    prediction as right when it names the dominant label.
    """
    loader = s.train_loader if loader is None else loader
    s.model.train()
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    seen = 0
    sync(s.device)
    start = time.perf_counter()
    bar = _progress(loader, desc, progress)
    for step, (images, labels) in enumerate(bar, 1):
        targets = labels
        if s.mixer is not None:
            images, targets = s.mixer(images, labels)
            labels = targets.argmax(1)
        logits, loss = train_step(s, images, targets)
        n = labels.shape[0]
        seen += n
        loss_sum += loss.detach().float() * n
        correct += (logits.detach().argmax(1) == labels).sum()
        if step % log_every == 0:
            total = loss_sum.item()  # the only host sync inside the epoch
            _check_finite(total, step)
            bar.set_postfix(loss=f"{total / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}",
                            lr=f"{s.optimizer.param_groups[0]['lr']:.2e}", refresh=False)
    sync(s.device)
    elapsed = time.perf_counter() - start
    total = loss_sum.item()
    _check_finite(total, len(loader))
    return {
        "train_loss": total / max(1, seen),
        "train_acc": 100.0 * correct.item() / max(1, seen),
        "lr": s.optimizer.param_groups[0]["lr"],
        "train_time_s": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else float("nan"),
    }


def _check_finite(loss_sum: float, step: int) -> None:
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"training loss became {loss_sum} by step {step} of this epoch; "
                            f"try a lower train.lr, train.grad_clip, or train.warmup_epochs")


@torch.inference_mode()
def evaluate(s: Setup, loader: Optional[Iterable] = None, *, top5: bool = False, progress: bool = False) -> dict:
    """Loss (plain cross-entropy, whatever the training loss smooths) and accuracy over ``loader``."""
    loader = s.val_loader if loader is None else loader
    s.model.eval()
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    correct5 = torch.zeros((), device=s.device, dtype=torch.long)
    seen = 0
    sync(s.device)
    start = time.perf_counter()
    for images, labels in _progress(loader, "eval", progress):
        with s.precision.autocast():
            logits = s.model(images)
            loss = F.cross_entropy(logits, labels)
        seen += labels.shape[0]
        loss_sum += loss.float() * labels.shape[0]
        correct += (logits.argmax(1) == labels).sum()
        if top5:
            k = min(5, logits.shape[1])
            correct5 += (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum()
    sync(s.device)
    out = {
        "val_loss": loss_sum.item() / max(1, seen),
        "val_acc": 100.0 * correct.item() / max(1, seen),
        "eval_time_s": time.perf_counter() - start,
    }
    if top5:
        out["val_top5"] = 100.0 * correct5.item() / max(1, seen)
    return out

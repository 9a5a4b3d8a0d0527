"""The shared training loop: ``train_step``, ``train_one_epoch``, ``evaluate`` (DeiT's engine.py split).

Loss and correct counts are accumulated on the device; the host syncs only every ``log_every``
steps and at the epoch's last one (to refresh the progress bar, hand ``on_log`` a readout and catch a
non-finite loss early), which is also the epoch's final sum.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterable, Optional

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
    """Forward, backward, (unscale, clip,) optimizer and schedule step. Returns (logits, loss), not synced.

    With ``s.accumulate_steps`` K > 1 the batch is K equal micro-batches, each forwarded and backwarded on
    its own with its loss divided by K, so the summed gradient is the whole batch's mean gradient and the
    step is the one a single K-times larger batch would take (BatchNorm, though, sees each micro-batch
    alone). With DDP only the last backward all-reduces (``no_sync`` on the others); a GradScaler scales
    every backward and steps once. ``loss`` is then the mean of the micro-batches' losses (the batch's).
    """
    k = s.accumulate_steps
    s.optimizer.zero_grad(set_to_none=True)
    if k == 1:
        with s.precision.autocast():
            logits = s.model(images)
            loss = s.criterion(logits, targets)
        _backward(s, loss)
    else:
        parts, losses = [], []
        for i, (x, y) in enumerate(zip(images.tensor_split(k), targets.tensor_split(k))):
            with _no_sync(s) if i < k - 1 else contextlib.nullcontext():
                with s.precision.autocast():
                    part = s.model(x)
                    part_loss = s.criterion(part, y)
                _backward(s, part_loss / k)
            parts.append(part.detach())
            losses.append(part_loss.detach().float())
        logits, loss = torch.cat(parts), torch.stack(losses).mean()
    if s.scaler is not None:
        if s.grad_clip is not None:
            s.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.module.parameters(), s.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        if s.grad_clip is not None:
            nn.utils.clip_grad_norm_(s.module.parameters(), s.grad_clip)
        s.optimizer.step()
    s.scheduler.step()
    return logits, loss


def _backward(s: Setup, loss: torch.Tensor) -> None:
    (s.scaler.scale(loss) if s.scaler is not None else loss).backward()


def _no_sync(s: Setup):
    """DDP's ``no_sync`` (gradients stay local until the micro-batch that ends the step); nothing alone."""
    ddp = getattr(s.model, "_orig_mod", s.model)  # under torch.compile: the module it wraps
    return ddp.no_sync() if isinstance(ddp, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()


class EpochMeter:
    """One epoch's running sums, kept on the device (no host sync per step); checkpointed mid-epoch so a
    resumed epoch reports the same loss and accuracy as an uninterrupted one."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0
        self.time_s = 0.0  # training time before this process took the epoch over

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.seen += n
        self.loss_sum += loss.detach().float() * n
        self.correct += (logits.detach().argmax(1) == labels).sum()

    def state_dict(self) -> dict:
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(), "seen": self.seen,
                "time_s": self.time_s}

    def load_state_dict(self, state: dict) -> None:
        self.loss_sum.copy_(state["loss_sum"])
        self.correct.copy_(state["correct"])
        self.seen, self.time_s = int(state["seen"]), float(state["time_s"])


def train_one_epoch(s: Setup, loader: Optional[Iterable] = None, *, log_every: int = 50, progress: bool = False,
                    desc: str = "train", meter: Optional[EpochMeter] = None,
                    on_step: Optional[Callable[[int], None]] = None,
                    on_log: Optional[Callable[[int, dict], None]] = None) -> dict:
    """One pass over ``loader`` (default: the setup's training loader).

    With MixUp/CutMix the loss is taken against the soft targets, and training accuracy counts a
    prediction as right when it names the dominant label. A resumed epoch passes the ``meter`` it
    stopped with and a loader that continues where it stopped (``TensorLoader.load_state_dict``);
    ``on_step(step)`` runs after every optimizer step (``step`` counts from the epoch's start) and may
    write a checkpoint or stop the epoch by raising. ``on_log(step, readout)`` runs, before ``on_step``,
    at each sync: the epoch's running ``loss``, ``acc``, ``lr`` and ``images_per_s`` so far.

    The progress bar (``progress``) stays on screen when the epoch ends, with its last readout.
    """
    loader = s.train_loader if loader is None else loader
    meter = EpochMeter(s.device) if meter is None else meter
    first = getattr(loader, "next_start", 0)  # a resumed TensorLoader starts mid-epoch
    s.model.train()
    sync(s.device)
    start = time.perf_counter() - meter.time_s
    steps = len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(loader, desc=desc, leave=True, dynamic_ncols=True, disable=not progress, initial=first, total=steps)
    step, sums = first, None
    for images, labels in bar:
        step += 1
        targets = labels
        if s.mixer is not None:
            images, targets = s.mixer(images, labels)
            labels = targets.argmax(1)
        logits, loss = train_step(s, images, targets)
        meter.add(loss, logits, labels)
        sums = None
        if step % log_every == 0 or step == steps:
            # The only host sync inside the epoch (with several processes: their sums, so that all of
            # them see a non-finite loss at the same step and stop together). At the last step it is
            # the epoch's own sum, so an epoch shorter than log_every still shows a readout.
            sums = total, correct, seen = s.dist.sum([meter.loss_sum, meter.correct, meter.seen], s.device)
            _check_finite(total, step)
            readout = {"loss": total / seen, "acc": 100 * correct / seen, "lr": s.optimizer.param_groups[0]["lr"],
                       "images_per_s": seen / max(time.perf_counter() - start, 1e-9)}
            bar.set_postfix({"loss": f"{readout['loss']:.4f}", "acc": f"{readout['acc']:.2f}",  # in this order
                             "lr": f"{readout['lr']:.2e}", "img/s": f"{readout['images_per_s']:.0f}"}, refresh=False)
            if on_log is not None:
                on_log(step, readout)
        if on_step is not None:
            meter.time_s = time.perf_counter() - start
            on_step(step)
    sync(s.device)
    elapsed = time.perf_counter() - start
    meter.time_s = elapsed
    if sums is None:  # over all processes
        sums = s.dist.sum([meter.loss_sum, meter.correct, meter.seen], s.device)
    total, correct, seen = sums
    _check_finite(total, step)
    return {
        "train_loss": total / max(1, seen),
        "train_acc": 100.0 * correct / max(1, seen),
        "lr": s.optimizer.param_groups[0]["lr"],
        "train_time_s": elapsed,
        "images_per_s": seen / max(elapsed, 1e-9),
        "train_images": int(seen),  # over all processes
    }


def _check_finite(loss_sum: float, step: int) -> None:
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"training loss became {loss_sum} by step {step} of this epoch; "
                            f"try a lower train.lr, train.grad_clip, or train.warmup_epochs")


@torch.inference_mode()
def evaluate(s: Setup, loader: Optional[Iterable] = None, *, top5: bool = False, progress: bool = False,
             on_batch: Optional[Callable[[], object]] = None) -> dict:
    """Loss (plain cross-entropy, whatever the training loss smooths) and accuracy over ``loader`` (with
    several processes: over every process's part of the validation split).
    ``on_batch()`` runs before each batch (and may stop the evaluation by raising)."""
    loader = s.val_loader if loader is None else loader
    s.eval_model.eval()
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    correct5 = torch.zeros((), device=s.device, dtype=torch.long)
    seen = 0
    sync(s.device)
    start = time.perf_counter()
    for images, labels in _progress(loader, "eval", progress):
        if on_batch is not None:
            on_batch()
        with s.precision.autocast():
            logits = s.eval_model(images)
            loss = F.cross_entropy(logits, labels)
        seen += labels.shape[0]
        loss_sum += loss.float() * labels.shape[0]
        correct += (logits.argmax(1) == labels).sum()
        if top5:
            k = min(5, logits.shape[1])
            correct5 += (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum()
    sync(s.device)
    loss_total, correct, correct5, seen = s.dist.sum([loss_sum, correct, correct5, seen], s.device)
    out = {
        "val_loss": loss_total / max(1, seen),
        "val_acc": 100.0 * correct / max(1, seen),
        "eval_time_s": time.perf_counter() - start,
        "val_images": int(seen),  # over all processes
    }
    if top5:
        out["val_top5"] = 100.0 * correct5 / max(1, seen)
    return out

"""The conventional training loop every benchmark compares against, written once.

It is the shape of torchvision's reference scripts:

* **data**: a torchvision-style dataset (each uint8 image -> PIL image -> PIL transforms -> ``ToTensor``
  -> ``Normalize``), batched by a ``DataLoader`` with ``workers`` processes, copied to the device per batch;
* **augmentation**: the dataset's own (``spec.augment``, off with ``data.augment: false``):
  ``crop_flip`` = ``RandomCrop(S, padding=4)`` + flip, ``flip`` = flip, ``rrc_flip`` =
  ``RandomResizedCrop(S, scale=(0.35, 1))`` + flip (the scale of ``data.augment.random_resized_crop``),
  ``none``; then ``TrivialAugmentWide`` when ``data.auto_augment`` asks for it, and
  ``RandomErasing(p, value="random")`` after ``Normalize`` when ``data.random_erasing`` is set
  (timm's 'pixel' mode, like ours);
* **recipe**: the config's optimizer and schedule (``build_optimizer`` / ``build_scheduler``, stepped
  every step), label smoothing, gradient clipping, MixUp/CutMix (``data.mixup_cutmix`` on the batch);
  seeded with ``seed_everything(cfg.seed)`` before the model is built, so it starts from the same
  initial weights as ``train.fit.fit``;
* a host sync every step (``.item()`` of the loss and of the correct count).

What it leaves out, on purpose, because they are what the benchmarks measure: mixed precision (it
always trains in fp32), channels_last, the fused optimizer, ``torch.compile`` and the cheaper CPU
dropout mask. Its random draws (order, crops, flips, ops) are torch's and PIL's per item, not ours per
batch, and PIL's ``RandomResizedCrop`` retries a box up to 10 times where ours clamps it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from config import Config
from data import DatasetSpec, ImageData, mixup_cutmix
from data.augment import RRC_SCALE
from models import build_model
from models.measure import sync
from train.setup import build_optimizer, build_scheduler, seed_everything


# For printed headers: how the reference trains, whatever our loop uses on the device.
LEAVES_OUT = "fp32 (no autocast), NCHW, eager, unfused optimizer, plain nn.Dropout"


def summary(workers: int) -> str:
    """One line for a report's header: what the reference is and what it leaves out."""
    return (f"reference: PIL transforms per item in a DataLoader with {workers} workers, .item() every step, "
            f"the config's recipe in {LEAVES_OUT}")


class PILDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR/MNIST datasets do per item: array -> PIL image -> transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable):
        self.x: np.ndarray = x.cpu().numpy()  # (N, C, H, W) uint8
        self.y: list[int] = y.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        img = self.x[i]
        img = Image.fromarray(img[0]) if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0))
        return self.transform(img), self.y[i]


def reference_transform(spec: DatasetSpec, augment: str = "none", auto_augment: str = "none",
                        random_erasing: float = 0.0):
    """The PIL pipeline for one item: ``augment`` as in ``data.train_transform``, then the optional
    TrivialAugmentWide, ToTensor, Normalize and RandomErasing. Returns float32 (C, S, S)."""
    from torchvision import transforms as T

    size = spec.image_size
    base = {
        "crop_flip": [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()],
        "flip": [T.RandomHorizontalFlip()],
        "rrc_flip": [T.RandomResizedCrop(size, scale=RRC_SCALE, antialias=True), T.RandomHorizontalFlip()],
        "none": [],
    }
    if augment not in base:
        raise ValueError(f"unknown augmentation '{augment}'")
    if auto_augment not in ("none", "trivialaugment"):
        raise ValueError(f"unknown auto_augment '{auto_augment}'")
    steps = base[augment] + ([T.TrivialAugmentWide()] if auto_augment == "trivialaugment" else [])
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    if random_erasing > 0:
        steps.append(T.RandomErasing(p=random_erasing, value="random"))
    return T.Compose(steps)


def reference_loaders(cfg: Config, data: ImageData, workers: int, *, pin_memory: bool = False):
    """(train, val) ``DataLoader``s: the training one shuffled (seeded from ``cfg.seed``), augmented as the
    config says, dropping the last partial batch like ours; the validation one plain."""
    d = cfg.data
    train_tf = reference_transform(data.spec, data.spec.augment if d.augment else "none", d.auto_augment,
                                   d.random_erasing)
    common = dict(num_workers=workers, pin_memory=pin_memory)
    train = torch.utils.data.DataLoader(PILDataset(*data.train, train_tf), batch_size=cfg.train.batch_size,
                                        shuffle=True, drop_last=True,
                                        generator=torch.Generator().manual_seed(cfg.seed), **common)
    val = torch.utils.data.DataLoader(PILDataset(*data.val, reference_transform(data.spec)),
                                      batch_size=cfg.train.eval_batch_size, **common)
    return train, val


@dataclass
class Reference:
    model: nn.Module
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    mixer: Optional[Callable]
    grad_clip: Optional[float]
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader


def build_reference(cfg: Config, data: ImageData, device: torch.device, workers: int = 2) -> Reference:
    """The conventional loop for ``cfg``: seeded like ``fit`` (same initial weights), the same recipe."""
    seed_everything(cfg.seed)
    model = build_model(cfg, data.spec).to(device)
    train_loader, val_loader = reference_loaders(cfg, data, workers, pin_memory=device.type == "cuda")
    if len(train_loader) == 0:
        raise AssertionError("empty training loader")  # prepare()/make_loaders reject this with a UserError first
    t = cfg.train
    optimizer = build_optimizer(model, t)
    return Reference(
        model=model, device=device, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, t, len(train_loader)),
        criterion=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
        mixer=mixup_cutmix(data.spec.num_classes, t.mixup_alpha, t.cutmix_alpha),
        grad_clip=t.grad_clip, train_loader=train_loader, val_loader=val_loader,
    )


def reference_step(ref: Reference, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """One conventional step on a host batch: copy, (mix,) forward, backward, (clip,) optimizer and schedule
    step, then ``.item()``. Returns (loss, correct predictions)."""
    images = images.to(ref.device, non_blocking=True)
    labels = labels.to(ref.device, non_blocking=True)
    targets = labels
    if ref.mixer is not None:
        images, targets = ref.mixer(images, labels)
        labels = targets.argmax(1)
    logits = ref.model(images)
    loss = ref.criterion(logits, targets)
    ref.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if ref.grad_clip is not None:
        nn.utils.clip_grad_norm_(ref.model.parameters(), ref.grad_clip)
    ref.optimizer.step()
    ref.scheduler.step()
    return loss.item(), (logits.argmax(1) == labels).sum().item()  # the host syncs here, every step


def time_steps(ref: Reference, steps: int) -> list[float]:
    """Seconds per step (fetching the batch included) for ``steps`` steps, on a fresh loader iterator.

    The loader's workers start with the call and are shut down after it, so they never compete with
    another loop for the CPU; a median over the steps leaves their start-up out.
    """
    ref.model.train()
    batches = iter(ref.train_loader)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        try:
            images, labels = next(batches)
        except StopIteration:  # a new epoch (new workers) inside the call
            batches = iter(ref.train_loader)
            images, labels = next(batches)
        reference_step(ref, images, labels)
        times.append(time.perf_counter() - t0)
    del batches  # shuts the workers down
    return times


@torch.no_grad()
def evaluate_reference(ref: Reference) -> dict:
    ref.model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in ref.val_loader:
        images, labels = images.to(ref.device, non_blocking=True), labels.to(ref.device, non_blocking=True)
        logits = ref.model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return {"val_loss": loss_sum / max(1, seen), "val_acc": 100.0 * correct / max(1, seen)}


def reference_fit(cfg: Config, ref: Reference, *, stop_at: Optional[float] = None,
                  log: Callable[[str], None] = print) -> list[dict]:
    """Train ``ref`` for ``cfg.train.epochs`` epochs, evaluating after each; one row per epoch, timed like
    ``fit`` (training + evaluation). Stops at the first epoch reaching ``stop_at`` % validation accuracy."""
    history = []
    for epoch in range(1, cfg.train.epochs + 1):
        sync(ref.device)
        t0 = time.perf_counter()
        ref.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for images, labels in ref.train_loader:
            loss, right = reference_step(ref, images, labels)
            loss_sum += loss * len(labels)
            correct += right
            seen += len(labels)
        train_time = time.perf_counter() - t0
        ev = evaluate_reference(ref)
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
               "val_loss": ev["val_loss"], "val_acc": ev["val_acc"], "lr": ref.optimizer.param_groups[0]["lr"],
               "train_time_s": train_time, "epoch_time_s": time.perf_counter() - t0}
        log(f"reference epoch {epoch}/{cfg.train.epochs}  train loss {row['train_loss']:.4f}  "
            f"val acc {row['val_acc']:.2f}%  {row['epoch_time_s']:.1f}s")
        history.append(row)
        if stop_at is not None and row["val_acc"] >= stop_at:
            break  # the schedule is fixed by train.epochs, so later epochs cannot change the time to here
    return history

"""Training throughput: this project's tensor loop vs. a conventional DataLoader + PIL loop.

    python -m train.bench --model simple_cnn --dataset fashion_mnist --root /usr/share/datasets/fashion-mnist

Both loops train the same model (same init, optimizer, batch size) on the same
decoded images; the reference reads them as torchvision datasets do
(``Image.fromarray`` per sample), applies PIL transforms (random crop with
padding, flip, ToTensor, Normalize) in a ``DataLoader`` with 2 workers, and
calls ``.item()`` every step, as seed 002's script does. Reported: median
images/s over timed steps after warm-up, with the device synchronised. The two
are measured alternately, in rounds, so machine noise hits both alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn

from config import from_dict
from errors import UserError
from train.run import build_model, load_data, make_loaders, resolve_device
from train.schedule import build_optimizer


class PILDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR/MNIST datasets do per item: array -> PIL image -> transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.x, self.y, self.transform = x.numpy(), y.tolist(), transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        img = self.x[i]
        img = Image.fromarray(img[0], mode="L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0))
        return self.transform(img), self.y[i]


def reference_loader(data, batch_size: int, workers: int):
    from torchvision import transforms as T

    spec = data.spec
    transform = T.Compose([T.RandomCrop(spec.image_size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(spec.mean, spec.std)])
    ds = PILDataset(*data.train, transform)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0)


def timed_steps(model, batches, optimizer, criterion, device, steps: int, warmup: int, item_every_step: bool):
    """Per-step wall times (s) for ``steps`` steps after ``warmup``; batches is an endless iterator."""
    times = []
    model.train()
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if item_every_step:
            loss.item()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(loader):
    while True:
        yield from loader


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--root", default="./datasets")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=30, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of both loops")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the reference loop")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    try:
        cfg = from_dict({"model": {"name": args.model},
                         "data": {"name": args.dataset, "root": args.root, "download": False},
                         "train": {"batch_size": args.batch_size, "device": args.device}})
        device = resolve_device(cfg.train.device)
        data = load_data(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    criterion = nn.CrossEntropyLoss()
    ours_model = build_model(cfg).to(device)
    ref_model = build_model(cfg).to(device)
    ours_opt, ref_opt = build_optimizer(ours_model, cfg.train), build_optimizer(ref_model, cfg.train)
    train_loader, _ = make_loaders(cfg, data.to(device), device)
    ours_batches = endless(train_loader)
    ref_batches = endless(reference_loader(data, args.batch_size, args.workers))
    ours, ref = [], []
    for r in range(args.rounds):
        warm = args.warmup if r == 0 else 1
        ours += timed_steps(ours_model, ours_batches, ours_opt, criterion, device, args.steps, warm, False)
        ref += timed_steps(ref_model, ref_batches, ref_opt, criterion, device, args.steps, warm, True)
    result = {
        "model": args.model, "dataset": args.dataset, "device": str(device), "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "steps": len(ours),
        "ours_images_per_s": args.batch_size / statistics.median(ours),
        "reference_images_per_s": args.batch_size / statistics.median(ref),
    }
    result["speedup"] = result["ours_images_per_s"] / result["reference_images_per_s"]
    print(f"| model | dataset | device | batch | ours img/s | DataLoader+PIL img/s | ratio |\n"
          f"|---|---|---|---|---|---|---|\n"
          f"| {args.model} | {args.dataset} | {device} | {args.batch_size} | {result['ours_images_per_s']:.0f} "
          f"| {result['reference_images_per_s']:.0f} | {result['speedup']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

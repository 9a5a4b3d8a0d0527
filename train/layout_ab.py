"""NCHW vs. NHWC (channels_last) training speed, side by side in one process.

    python -m train.layout_ab --models simple_cnn,resnet18,vit_seed003 --device cpu

Per model: two copies set up by the training loop's own ``prepare()``, one per memory
format, trained alternately in rounds of ``--steps`` steps on synthetic images of the
dataset's shape, so machine noise hits both alike. Prints a Markdown table of median
images/s and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Optional

import torch

from config import from_dict
from errors import UserError
from models import MODELS
from train.bench import Take, endless, synthetic_data
from train.engine import train_one_epoch
from train.run import build_model, prepare, resolve_device


def trainer(name: str, dataset: str, batch_size: int, device: torch.device, channels_last: bool):
    cfg = from_dict({"model": {"name": name}, "data": {"name": dataset, "download": False},
                     "train": {"batch_size": batch_size, "device": device.type, "epochs": 1, "log_every": 10 ** 9,
                               "channels_last": channels_last}})
    s = prepare(cfg, build_model(cfg), synthetic_data(dataset, 20 * batch_size).to(device), device)
    stream = endless(s.train_loader)
    return lambda n: train_one_epoch(s.model, Take(stream, n), s.optimizer, s.scheduler, s.criterion,
                                     device=device, precision=s.precision, scaler=s.scaler,
                                     log_every=10 ** 9)["images_per_s"]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.layout_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="comma-separated model names")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="steps per round")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    try:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        for n in names:
            MODELS.get(n)
        device = resolve_device(args.device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.steps} steps, medians\n")
    print("| model | NCHW img/s | NHWC img/s | NHWC / NCHW |\n|---|---:|---:|---:|")
    for name in names:
        runs = {cl: trainer(name, args.dataset, args.batch_size, device, cl) for cl in (False, True)}
        for run in runs.values():
            run(2)  # warm-up
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for cl, run in runs.items():
                rates[cl].append(run(args.steps))
        nchw, nhwc = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"| {name} | {nchw:,.0f} | {nhwc:,.0f} | {nhwc / nchw:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One training setting off vs. on, side by side in one process: is it worth it on this machine?

    python -m train.ab --setting channels_last --models simple_cnn,resnet18,vit_seed003 --device cpu
    python -m train.ab --setting bf16 --models simple_cnn_seed002,vit_seed003 --device cpu

Settings: ``channels_last`` (NCHW vs. NHWC) and ``bf16`` (fp32 vs. bf16 autocast, which
the loop uses on CUDA only). Per model: two copies set up by the training loop's own
``prepare()``, one per value, trained alternately in rounds of ``--steps`` steps on
synthetic images of the dataset's shape, so machine noise hits both alike. Prints a
Markdown table of median images/s and their ratio.
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
from train.engine import Precision, train_one_epoch
from train.run import build_model, prepare, resolve_device


SETTINGS = {"channels_last": ("NCHW", "NHWC"), "bf16": ("fp32", "bf16 autocast")}


def trainer(name: str, dataset: str, batch_size: int, device: torch.device, setting: str, on: bool):
    train = {"batch_size": batch_size, "device": device.type, "epochs": 1, "log_every": 10 ** 9}
    if setting == "channels_last":
        train["channels_last"] = on
    cfg = from_dict({"model": {"name": name}, "data": {"name": dataset, "download": False}, "train": train})
    s = prepare(cfg, build_model(cfg), synthetic_data(dataset, 20 * batch_size).to(device), device)
    precision, scaler = s.precision, s.scaler
    if setting == "bf16":  # the loop's own choice is fp32 on the CPU; here both are tried
        precision, scaler = Precision(device.type, torch.bfloat16 if on else None), None
    stream = endless(s.train_loader)
    return lambda n: train_one_epoch(s.model, Take(stream, n), s.optimizer, s.scheduler, s.criterion,
                                     device=device, precision=precision, scaler=scaler,
                                     log_every=10 ** 9)["images_per_s"]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", required=True, choices=sorted(SETTINGS))
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
    off, on = SETTINGS[args.setting]
    print(f"{device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.steps} steps, medians\n")
    print(f"| model | {off} img/s | {on} img/s | {on} / {off} |\n|---|---:|---:|---:|")
    for name in names:
        runs = {v: trainer(name, args.dataset, args.batch_size, device, args.setting, v) for v in (False, True)}
        for run in runs.values():
            run(2)  # warm-up
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for cl, run in runs.items():
                rates[cl].append(run(args.steps))
        a, b = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"| {name} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

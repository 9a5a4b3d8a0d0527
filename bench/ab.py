"""One training setting off vs. on, side by side in one process: is it worth it on this machine?

    python -m bench.ab --setting channels_last --models simple_cnn,resnet18,vit --device cpu
    python -m bench.ab --setting bf16 --models simple_cnn,vit --device cpu
    python -m bench.ab --setting cpu_dropout --models vit,cnn_tr_small --device cpu

Settings:

* ``channels_last``: NCHW vs. NHWC (``train.channels_last``);
* ``bf16``: fp32 vs. bf16 autocast (the loop's own choice on a CPU without bf16 hardware is fp32;
  here both are tried);
* ``cpu_dropout``: plain ``nn.Dropout`` vs. the cheaper CPU mask ``prepare`` swaps in on the CPU
  (``train.cpu_dropout``); CPU only.

Per model: two setups built by the training loop's own ``prepare()`` from the same seed, one per
value, trained alternately in rounds of ``--steps`` steps on synthetic images of the dataset's shape,
so machine noise hits both alike. Prints a Markdown table of median images/s and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable, Optional

import torch
import torch.nn as nn

from bench.common import Take, bench_config, dataset_for, endless, model_names, synthetic_data
from core.cli import run_cli
from core.errors import UserError
from data import get_spec
from models import build_model
from train.engine import train_one_epoch
from train.setup import Setup, prepare, resolve_device, seed_everything

SETTINGS = {"channels_last": ("NCHW", "NHWC"), "bf16": ("fp32", "bf16 autocast"),
            "cpu_dropout": ("nn.Dropout", "CPU dropout mask")}


def active_dropout(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def setup_for(name: str, dataset: str, batch_size: int, device: torch.device, setting: str, on: bool) -> Setup:
    train = {"batch_size": batch_size, "device": device.type}
    if setting in ("channels_last", "cpu_dropout"):
        train[setting] = on
    if setting == "bf16":
        train["precision"] = "bf16" if on else "fp32"
    cfg = bench_config(name, dataset, **train)
    seed_everything(cfg.seed)
    s = prepare(cfg, build_model(cfg, get_spec(dataset)), synthetic_data(dataset, 8 * batch_size).to(device),
                device)
    return s


def rate(images_per_s: float) -> str:
    """Whole images/s, or three significant digits below 100 (a slow model on a slow CPU)."""
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.3g}"


def runner(s: Setup) -> Callable[[int], float]:
    stream = endless(s.train_loader)
    return lambda n: train_one_epoch(s, Take(stream, n), log_every=10 ** 9)["images_per_s"]


def _main(argv: Optional[list[str]]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", required=True, choices=sorted(SETTINGS))
    p.add_argument("--models", required=True, help="comma-separated model names")
    p.add_argument("--dataset", help="dataset shape (default: each model's own, CIFAR-10 for most)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="steps per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the rounds")
    args = p.parse_args(argv)
    names = model_names(args.models)
    datasets = {n: dataset_for(n, args.dataset) for n in names}
    for flag, value in (("--steps", args.steps), ("--rounds", args.rounds), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag}: got {value}; must be >= 1")
    device = resolve_device(args.device)
    if args.setting == "cpu_dropout" and device.type != "cpu":
        raise UserError(f"--setting cpu_dropout: a CPU-only mask (prepare swaps it in on the CPU only); "
                        f"got --device {args.device} -> {device}; use --device cpu")
    off, on = SETTINGS[args.setting]
    extra = args.setting == "cpu_dropout"  # how many modules the two sides differ by (p = 0 is a no-op)
    print(f"{device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.steps} steps, medians\n")
    print(f"| model | {off} img/s | {on} img/s | {on} / {off} |" + (" dropout modules with p > 0 |" if extra else ""))
    print("|---|---:|---:|---:|" + ("---:|" if extra else ""))
    for name in names:
        setups = {v: setup_for(name, datasets[name], args.batch_size, device, args.setting, v) for v in (False, True)}
        runs = {v: runner(s) for v, s in setups.items()}
        for run in runs.values():
            run(args.warmup)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for v, run in runs.items():
                rates[v].append(run(args.steps))
        a, b = statistics.median(rates[False]), statistics.median(rates[True])
        cell = f" {active_dropout(setups[True].module)} |" if extra else ""
        print(f"| {name} | {rate(a)} | {rate(b)} | {b / a:.2f}x |{cell}", flush=True)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

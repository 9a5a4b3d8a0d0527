"""One training setting off vs. on, side by side in one process: is it worth it on this machine?

    python -m bench.ab --setting channels_last --models simple_cnn,resnet18,vit --device cpu
    python -m bench.ab --setting bf16 --models simple_cnn,vit --device cpu
    python -m bench.ab --setting cpu_dropout --models vit,cnn_tr_small --device cpu
    python -m bench.ab --setting compile --models vit_mini_patch4_32,cnn_tr_medium --device cpu
    python -m bench.ab --setting fused_optimizer --models vit_mini_patch4_32,resnet18 --device cpu
    python -m bench.ab --setting attn_dropout --models vit_mini_patch4_32 --device cpu --precision bf16
    python -m bench.ab --setting attention_maps --models vit_mini_patch4_32,cnn_tr_medium --device cpu

Settings:

* ``channels_last``: NCHW vs. NHWC (``train.channels_last``);
* ``bf16``: fp32 vs. bf16 autocast (the loop's own choice on a CPU without bf16 hardware is fp32;
  here both are tried);
* ``cpu_dropout``: plain ``nn.Dropout`` vs. the cheaper CPU mask ``prepare`` swaps in on the CPU
  (``train.cpu_dropout``); CPU only.
* ``compile``: eager vs. ``torch.compile`` (``train.compile: default``); the warm-up column holds the
  compile time, which a run pays once (twice with its evaluation graph);
* ``fused_optimizer``: the optimizer's ``foreach`` kernels vs. its single fused kernel (``fused=True``);
* ``attn_dropout``: attention dropout as the model has it vs. 0, which lets ``scaled_dot_product_attention``
  take its fused kernel (with dropout it falls back to the math path on the CPU). This changes the recipe,
  so it measures what the fallback costs; it is not a lever to turn on by itself;
* ``attention_maps``: with attention dropout on the CPU, SDPA (its math path) vs. the weights written out and
  masked by the model's dropout module (``models/attention.py``, the default).

``--precision`` sets both sides' ``train.precision`` (default: the loop's own choice), except for ``bf16``,
which is the setting measured.

Per model: two setups built by the training loop's own ``prepare()`` from the same seed, one per
value, trained alternately in rounds of ``--steps`` steps on synthetic images of the dataset's shape,
so machine noise hits both alike. Prints a Markdown table of median images/s and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn as nn

from bench.common import PRECISIONS, Take, bench_config, dataset_for, endless, model_names, synthetic_data
from core.cli import run_cli
from core.errors import UserError
from data import get_spec
from models import build_model
from train.engine import train_one_epoch
from train.setup import Setup, prepare, resolve_device, seed_everything

SETTINGS = {"channels_last": ("NCHW", "NHWC"), "bf16": ("fp32", "bf16 autocast"),
            "cpu_dropout": ("nn.Dropout", "CPU dropout mask"), "compile": ("eager", "torch.compile"),
            "fused_optimizer": ("foreach optimizer", "fused optimizer"),
            "attn_dropout": ("attention dropout", "no attention dropout"),
            "attention_maps": ("SDPA", "weights written out")}


def active_dropout(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def attention_dropouts(model: nn.Module) -> list[nn.Dropout]:
    """The dropout modules applied to attention maps (an attention module's ``attn_drop``)."""
    return [m.attn_drop for m in model.modules()
            if "attention" in type(m).__name__.lower() and isinstance(getattr(m, "attn_drop", None), nn.Dropout)]


def check_model(model: nn.Module, name: str, setting: str) -> None:
    """A model whose two sides would be the same program is an error, not a 1.00x."""
    if setting not in ("attn_dropout", "attention_maps"):
        return
    if not any(d.p > 0 for d in attention_dropouts(model)):
        raise UserError(f"--setting {setting}: {name} has no attention dropout"
                        + (" to turn off" if setting == "attn_dropout" else "; SDPA runs either way"))
    if setting == "attention_maps" and not any(getattr(m, "maps_on_cpu", None) is not None
                                                for m in model.modules()):
        raise UserError(f"--setting attention_maps: {name}'s attention does not choose between SDPA and written-out "
                        f"weights (models/attention.py); both sides would be the same")


def setup_for(name: str, dataset: str, batch_size: int, device: torch.device, setting: str, on: bool,
              precision: str = "auto") -> Setup:
    train = {"batch_size": batch_size, "device": device.type, "precision": precision}
    if setting in ("channels_last", "cpu_dropout"):
        train[setting] = on
    if setting == "bf16":
        train["precision"] = "bf16" if on else "fp32"
    if setting == "compile":
        train["compile"] = "default" if on else "off"
    cfg = bench_config(name, dataset, **train)
    seed_everything(cfg.seed)
    model = build_model(cfg, get_spec(dataset))
    check_model(model, name, setting)
    if setting == "attn_dropout" and on:
        for d in attention_dropouts(model):
            d.p = 0.0
    if setting == "attention_maps":
        for m in model.modules():
            if getattr(m, "maps_on_cpu", None) is not None:
                m.maps_on_cpu = on
    fused = on if setting == "fused_optimizer" else None
    return prepare(cfg, model, synthetic_data(dataset, 8 * batch_size).to(device), device, fused_optimizer=fused)


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
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="both sides' train.precision (not with --setting bf16)")
    args = p.parse_args(argv)
    names = model_names(args.models)
    datasets = {n: dataset_for(n, args.dataset) for n in names}
    for flag, value in (("--steps", args.steps), ("--rounds", args.rounds), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag}: got {value}; must be >= 1")
    device = resolve_device(args.device)
    if args.setting in ("cpu_dropout", "attention_maps") and device.type != "cpu":
        raise UserError(f"--setting {args.setting}: a CPU-only choice (elsewhere both sides run the same code); "
                        f"got --device {args.device} -> {device}; use --device cpu")
    if args.setting in ("attn_dropout", "attention_maps"):  # before the table: a model it cannot change is one line
        for name in names:
            check_model(build_model(bench_config(name, datasets[name]), get_spec(datasets[name])), name, args.setting)
    if args.setting == "bf16" and args.precision != "auto":
        raise UserError("--precision: the setting measured is bf16 itself; leave --precision out")
    off, on = SETTINGS[args.setting]
    extra = args.setting == "cpu_dropout"  # how many modules the two sides differ by (p = 0 is a no-op)
    print(f"{device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.steps} steps, medians\n")
    print(f"| model | {off} img/s | {on} img/s | {on} / {off} | warm-up s ({off} / {on}) |"
          + (" dropout modules with p > 0 |" if extra else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|" if extra else ""))
    for name in names:
        setups = {v: setup_for(name, datasets[name], args.batch_size, device, args.setting, v, args.precision)
                  for v in (False, True)}
        runs = {v: runner(s) for v, s in setups.items()}
        warmup = {}
        for v, run in runs.items():  # the first steps pay for compiling, allocating, choosing kernels
            t0 = time.perf_counter()
            run(args.warmup)
            warmup[v] = time.perf_counter() - t0
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for v, run in runs.items():
                rates[v].append(run(args.steps))
        a, b = statistics.median(rates[False]), statistics.median(rates[True])
        cell = f" {active_dropout(setups[True].module)} |" if extra else ""
        print(f"| {name} | {rate(a)} | {rate(b)} | {b / a:.2f}x | {warmup[False]:.1f} / {warmup[True]:.1f} |{cell}",
              flush=True)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

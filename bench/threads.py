"""Training images/s at several torch thread counts, on a quiet machine and on a loaded one, side by side in one run:
which ``train.threads`` to use here, and what ``auto`` should be.

    python -m bench.threads                                   # simple_cnn and vit_mini_patch4_32, threads 1 and all cores
    python -m bench.threads --models mnist_cnn,vit_mini_patchnorm --threads 1,2,4 --load 0,1,2

For each load (``--load``: that many other processes busy-looping, started by this benchmark and stopped at the
end of that load's rows), each model trains with each thread count in turn, ``--steps`` steps a round for
``--rounds`` rounds, so machine noise hits every count alike; one setup per model (the training loop's own
``prepare()``, synthetic images of the dataset's shape) serves all thread counts. Prints a Markdown table of
median images/s and each count's speed relative to one thread.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Optional

import torch

from bench.ab import rate, runner
from bench.common import bench_config, dataset_for, model_names, synthetic_data
from core.cli import run_cli
from core.machine import cpu_name
from core.errors import UserError
from data import get_spec
from models import build_model
from train.setup import Setup, prepare, seed_everything

BUSY = "while True: pass"  # one core's worth of load, as a stray job or another user would be


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def setup_for(name: str, dataset: str, batch_size: int) -> Setup:
    cfg = bench_config(name, dataset, batch_size=batch_size, device="cpu")
    seed_everything(cfg.seed)
    return prepare(cfg, build_model(cfg, get_spec(dataset)), synthetic_data(dataset, 8 * batch_size),
                   torch.device("cpu"))


def counts(text: str, flag: str, low: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}: got {text!r}; expected comma-separated integers") from None
    if not values or min(values) < low:
        raise UserError(f"{flag}: got {text!r}; expected comma-separated integers >= {low}")
    return values


def _main(argv: Optional[list[str]]) -> int:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="simple_cnn,vit_mini_patch4_32", help="comma-separated model names")
    p.add_argument("--dataset", help="dataset shape (default: each model's own, CIFAR-10 for most)")
    p.add_argument("--threads", default=",".join(map(str, sorted({1, cores}))),
                   help=f"torch thread counts to compare (default 1,{cores}: one and every core here)")
    p.add_argument("--load", default="0,1", help="busy-looping processes beside the training, one row each")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per thread count before the rounds")
    args = p.parse_args(argv)
    names = model_names(args.models)
    threads, loads = counts(args.threads, "--threads", 1), counts(args.load, "--load", 0)
    for flag, value in (("--steps", args.steps), ("--rounds", args.rounds), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag}: got {value}; must be >= 1")
    previous = torch.get_num_threads()
    print(f"{cpu_name()} ({platform.machine()}), {cores} cores available, torch {torch.__version__}, batch "
          f"{args.batch_size}, {args.rounds} rounds x {args.steps} steps, medians\n")
    print("| model | busy processes | load avg before | " + " | ".join(f"{t} thread(s) img/s" for t in threads) + " | "
          + " | ".join(f"{t} / 1" for t in threads if t != threads[0]) + " |")
    print("|---|---:|---:|" + "---:|" * (2 * len(threads) - 1))
    setups = {n: setup_for(n, dataset_for(n, args.dataset), args.batch_size) for n in names}
    runs = {n: runner(s) for n, s in setups.items()}
    try:
        for load in loads:
            procs = busy(load)
            try:
                time.sleep(1.0 if load else 0.0)  # the busy loops are running before the first timed step
                for name, run in runs.items():
                    before = os.getloadavg()[0]  # this machine's 1-minute load: is "quiet" quiet?
                    for t in threads:
                        torch.set_num_threads(t)
                        run(args.warmup)
                    rates: dict[int, list[float]] = {t: [] for t in threads}
                    for _ in range(args.rounds):
                        for t in threads:
                            torch.set_num_threads(t)
                            rates[t].append(run(args.steps))
                    med = {t: statistics.median(r) for t, r in rates.items()}
                    base = med[threads[0]]
                    print(f"| {name} | {load} | {before:.1f} | " + " | ".join(rate(med[t]) for t in threads) + " | "
                          + " | ".join(f"{med[t] / base:.2f}x" for t in threads if t != threads[0]) + " |",
                          flush=True)
            finally:
                stop(procs)
    finally:
        torch.set_num_threads(previous)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

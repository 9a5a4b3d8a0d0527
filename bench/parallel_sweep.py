"""Wall time of one sweep run one point after another (``--jobs 1``) against several points at once.

    python -m bench.parallel_sweep --cfg configs/sweeps/fmnist_sizes.yaml --runs "--jobs 1" "--jobs 2" \\
        --set data.root=/usr/share/datasets/fashion-mnist --set train.epochs=1
    python -m bench.parallel_sweep --cfg configs/cnn_tr_small.yaml --synthetic-cifar10 50000 \\
        --set "sweep.model.name=[simple_cnn,cnn_tr_small,cnn_tr_medium,cnn_tr_large,cnn_tr_huge]" \\
        --runs "--jobs 1" "--jobs-per-gpu 5"

Each setting runs the same sweep through ``main.py`` as a user would, one setting after the other, into
its own comparison directory under ``--out``; the table gives each one's wall time, its speed-up over the
first, the GPU's mean utilisation while it ran (``nvidia-smi``, where there is one), and whether every
point's numbers (metrics.jsonl without wall-clock fields, and the final weights) equal the first
setting's. ``--synthetic-cifar10 N`` writes N random training images (and N/5 test images) in CIFAR-10's
real on-disk format first, for machines without the dataset.
"""
from __future__ import annotations

import argparse
import json
import pickle
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from core.cli import run_cli
from core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("epoch_time_s", "train_time_s", "images_per_s")


def write_synthetic_cifar10(root: Path, n_train: int, seed: int = 0) -> Path:
    """Random images and labels as CIFAR-10's python pickles (five training batches, a test batch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = -(-n_train // 5)
    batches = [(f"data_batch_{i}", per) for i in range(1, 6)] + [("test_batch", max(1, n_train // 5))]
    for name, n in batches:
        data = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(data, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    return root


class GpuSampler:
    """Mean GPU utilisation (%) over a block, sampled from ``nvidia-smi`` every half second."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split("\n")[0]
            try:
                self.samples.append(float(out.split(",")[0]))
            except ValueError:
                pass

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.samples) if self.samples else None


def point_numbers(compare_dir: Path) -> dict[str, tuple[list[dict], dict]]:
    """Each point's metrics (without wall-clock fields) and final weights, by point name."""
    manifest = json.loads((compare_dir / "sweep.json").read_text())
    out = {}
    for p in manifest["points"]:
        run_dir = Path(p["run_dir"]) if p.get("run_dir") else None
        if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
            continue
        rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        weights = torch.load(run_dir / "last.pt", weights_only=True)["model"] if (run_dir / "last.pt").is_file() else {}
        out[p["name"]] = (rows, weights)
    return out


def same(a: tuple[list[dict], dict], b: tuple[list[dict], dict]) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.parallel_sweep", description=__doc__.split("\n")[0])
    p.add_argument("--cfg", required=True, help="a sweep config (or a config made a sweep by --set sweep.KEY=[...])")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    p.add_argument("--runs", nargs="+", default=["--jobs 1", "--jobs 2"],
                   help="main.py flags of each setting, compared with the first (default: '--jobs 1' '--jobs 2')")
    p.add_argument("--synthetic-cifar10", type=int, metavar="N", help="write N random CIFAR-10-format images first")
    p.add_argument("--out", default="runs/bench-parallel-sweep", help="where the settings' comparisons go")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: not empty; pick a new directory")
    overrides = list(args.overrides)
    if args.synthetic_cifar10:
        if args.synthetic_cifar10 < 10:
            raise UserError(f"--synthetic-cifar10: got {args.synthetic_cifar10}; must be at least 10")
        root = write_synthetic_cifar10(out / "data", args.synthetic_cifar10)
        overrides += ["data.name=cifar10", f"data.root={root}", "data.download=false", "data.cache=false"]
    sets = [a for o in overrides for a in ("--set", o)]

    rows = []
    for i, flags in enumerate(args.runs):
        folder = out / f"setting{i}"
        cmd = [sys.executable, "main.py", "--cfg", args.cfg, *sets, "--set", f"output.dir={out / f'runs{i}'}",
               "--out", str(folder), *shlex.split(flags)]
        print("$ " + shlex.join(cmd), flush=True)
        with GpuSampler() as gpu:
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - start
        (out / f"setting{i}.log").write_text(proc.stdout + proc.stderr)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        print(f"  exit {proc.returncode} in {wall:.1f} s; " + " | ".join(tail), flush=True)
        rows.append({"flags": flags, "wall": wall, "gpu": gpu.mean, "exit": proc.returncode,
                     "numbers": point_numbers(folder) if (folder / "sweep.json").is_file() else {}})

    base = rows[0]
    print(f"\n| setting | wall time (s) | vs. first | mean GPU utilisation | points done | numbers equal to the first |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        equal = [same(r["numbers"][k], base["numbers"][k]) for k in r["numbers"] if k in base["numbers"]]
        util = f"{r['gpu']:.0f}%" if r["gpu"] is not None else "n/a"
        print(f"| `{r['flags']}` | {r['wall']:.1f} | {base['wall'] / r['wall']:.2f}x | {util} | {len(r['numbers'])} | "
              f"{sum(equal)} of {len(equal)} |")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Write small datasets in the official on-disk formats, for the real loaders to read.

Images are learnable on purpose: class k is a bright square at a class-specific
position on a noisy background, so a few epochs of training must beat chance by far.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import pickle
import struct
from pathlib import Path
from typing import Callable, Optional

import numpy as np


def pattern_images(n: int, num_classes: int, chans: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, chans, size, size) and int labels (n,): a class-positioned square on noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = rng.integers(0, 60, (n, chans, size, size), dtype=np.uint8)
    grid = int(np.ceil(np.sqrt(num_classes)))
    cell = size // grid
    for i, label in enumerate(labels):
        r, c = divmod(int(label), grid)
        images[i, :, r * cell: (r + 1) * cell, c * cell: (c + 1) * cell] = 230
    return images, labels


def idx_bytes(array: np.ndarray, gz: bool) -> bytes:
    """An idx file's bytes: its header, the uint8 data, gzip-compressed for a ``.gz`` name (level 1: the fixtures
    are written for a hundred tests, and level 9 took most of their time)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    return gzip.compress(data, compresslevel=1, mtime=0) if gz else data


def write_idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(idx_bytes(array, path.suffix == ".gz"))


@functools.lru_cache(maxsize=16)
def _mnist_files(n_train: int, n_test: int, gz: bool, seed: int) -> tuple[tuple[str, bytes], ...]:
    xtr, ytr = pattern_images(n_train, 10, 1, 28, seed)
    xte, yte = pattern_images(n_test, 10, 1, 28, seed + 1)
    ext = ".gz" if gz else ""
    return tuple((name + ext, idx_bytes(array, gz)) for name, array in (
        ("train-images-idx3-ubyte", xtr[:, 0]), ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte[:, 0]), ("t10k-labels-idx1-ubyte", yte)))


def write_mnist(folder: Path, n_train: int = 200, n_test: int = 100, gz: bool = True, seed: int = 0) -> Path:
    """The four idx files (``.gz`` by default) directly in ``folder``; each set of arguments is built once per
    process and written as often as tests ask."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in _mnist_files(n_train, n_test, gz, seed):
        (folder / name).write_bytes(data)
    return folder


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        x, y = pattern_images(per_batch, 10, 3, 32, seed + i)
        _pickle(folder / f"data_batch_{i}", {b"batch_label": b"fixture", b"data": x.reshape(len(x), -1),
                                             b"labels": [int(v) for v in y]})
    x, y = pattern_images(n_test, 10, 3, 32, seed)
    _pickle(folder / "test_batch", {b"data": x.reshape(len(x), -1), b"labels": [int(v) for v in y]})
    _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return root


def write_cifar100(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = pattern_images(n, 100, 3, 32, s)
        _pickle(folder / name, {b"data": x.reshape(n, -1), b"fine_labels": [int(v) for v in y],
                                b"coarse_labels": [int(v) // 5 for v in y]})
    return root


def write_imagenette(root: Path, per_class: int = 2, classes: int = 10, seed: int = 0) -> Path:
    """``imagenette2-160/{train,val}/<wnid>/*.JPEG`` with non-square images of mixed sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for k in range(classes):
            d = root / "imagenette2-160" / split / f"n0{k:07d}"
            d.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                h, w = 160, int(rng.integers(160, 240))
                pixels = np.full((h, w, 3), 25 * k, dtype=np.uint8)
                pixels += rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"img_{j}.JPEG", format="JPEG", quality=90)
    return root


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


# ----------------------------------------------------------------------------- shared test helpers


def missing(component: str, why: str, start: str) -> None:
    """A system test's component (chromium, a SLURM cluster, a tmpfs) cannot be had here: skip, saying why and
    how to get it; under ``CI=true`` fail instead, since .ci/run provides it and a skip would pass unseen."""
    import os

    import pytest

    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI: {component} is needed but {why} (.ci/run should have provided it: {start})", pytrace=False)
    pytest.skip(f"{component}: {why}; {start}")


@contextlib.contextmanager
def log_lines(callback: Optional[Callable[[str], None]] = None):
    """The lines the project logs (``core.log``) while inside, as a list; ``callback(line)`` is called on each
    as it is logged (e.g. to send a signal after an epoch)."""
    import logging

    from core.log import ROOT, SUMMARY

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            if callback is not None:
                callback(lines[-1])

    handler = Collect(SUMMARY)
    logging.getLogger(ROOT).addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger(ROOT).removeHandler(handler)


# A ViT small enough that a test epoch over a fixture takes a fraction of a second on 2 cores.
TINY_VIT = {"name": "vit", "patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2, "drop_path": 0.0}
# A model that learns the fixture's classes in 3 epochs of 128 images at a learning rate near 0.03, and nothing at
# 1e-3 or below (tests/test_tune.py: the pruner has trials to stop).
TINY_CONVMIXER = {"name": "convmixer", "dim": 16, "depth": 1, "kernel_size": 3, "patch_size": 4}


ROOT = Path(__file__).resolve().parents[1]


def tiny_raw(root: Path, out: Path, *, model: Optional[dict] = None, dataset: str = "fashion_mnist",
             seed: int = 0, name: Optional[str] = "t", data: Optional[dict] = None, **train) -> dict:
    """A small, fast config (as a raw dict) over fixture files: a tiny ViT, 2 epochs of batch 32, no cache, no
    latency measurement in the comparison of a sweep."""
    return {
        **({"name": name} if name else {}), "seed": seed,
        "model": model or dict(TINY_VIT),
        "data": {"name": dataset, "root": str(root), "download": False, "cache": False, **(data or {})},
        "train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 64, "lr": 2.0e-3, "log_every": 2, **train},
        # The comparison after a sweep times every model for seconds: tests that check latency ask for it.
        "output": {"dir": str(out), "latency": False},
    }


def tiny_config(root: Path, out: Path, **kwargs):
    """``tiny_raw`` as a validated ``Config``."""
    from config import from_dict

    return from_dict(tiny_raw(root, out, **kwargs))


def write_yaml(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_main(*args, module: Optional[str] = None, cwd: Path = ROOT):
    """``python main.py ARGS`` (or ``python -m MODULE ARGS``) as a user runs it: a subprocess, output captured."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # OMP_NUM_THREADS: conftest's
    cmd = [sys.executable, "-m", module] if module else [sys.executable, str(ROOT / "main.py")]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_fit(cfg, **extra):
    """``train.fit.fit`` into a new ``RunDir``: (run directory, results)."""
    from train.fit import fit
    from train.rundir import RunDir

    run_dir = RunDir(cfg.output.dir, cfg.run_name, extra=extra or None)
    results = fit(cfg, run_dir, progress=False)
    return run_dir.path, results


TIMING = ("epoch_time_s", "train_time_s", "images_per_s")  # wall-clock: the only fields two equal runs differ in


def numbers(rows: list[dict]) -> list[dict]:
    """metrics.jsonl rows without their wall-clock fields: what must match bit for bit between runs."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def read_metrics(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def call_main(capsys, *args, module: str = "main"):
    """``main.main(ARGS)`` (or ``python -m MODULE``'s: ``plots``, ``evaluate.compare``) in this process: what the
    script runs, without the seconds a new interpreter spends importing torch. Returns an object like
    ``run_main``'s."""
    import importlib
    import subprocess

    main = importlib.import_module({"main": "main", "plots": "plots.report"}.get(module, module)).main
    capsys.readouterr()  # drop what earlier code printed
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def hold_lock(folder: Path):
    """Another process that holds ``folder``'s lock (core/lock.py) until it is killed (a subprocess.Popen)."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from core.lock import DirLock; "
                               "DirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)", str(folder)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def run_dirs_at(out: Path, proc, epochs: int, count: int = 1, timeout: float = 180) -> list[Path]:
    """The run directories under ``out`` once ``count`` of them have finished ``epochs`` epochs (their
    results.json says so), while ``proc`` (a subprocess.Popen) trains them; fails the test if it ends first."""
    import time

    import pytest

    from train.rundir import read_results

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dirs = [d for d in sorted(out.glob("*/")) if (read_results(d) or {}).get("epochs_done", 0) >= epochs]
        if len(dirs) >= count:
            return dirs
        if proc.poll() is not None:
            pytest.fail(f"it ended early (exit {proc.returncode}):\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run(s) did not get going in time")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a real, complete PNG file (its signature checked and its data verified)."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


class FakeClock:
    """``time.perf_counter`` for models.measure that moves only when a stand-in model ``sleep``s: latency
    tests then time exactly what they ask for, whatever the machine's load, and take no wall time."""

    def __init__(self, monkeypatch):
        import types

        import models.measure

        self.now = 0.0
        monkeypatch.setattr(models.measure, "time", types.SimpleNamespace(perf_counter=lambda: self.now))

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def auto_cpu_precision() -> str:
    """What ``train.precision: auto`` is on the CPU here: fp32 or bfloat16, as VITLAB_CPU_BF16 (conftest) says."""
    from train.setup import cpu_has_native_bf16

    return "bfloat16" if cpu_has_native_bf16() else "fp32"


def built_once(tmp_path_factory, name: str, build):
    """``build(folder)``'s result, computed once per test session whichever pytest-xdist worker asks first, and
    read back by the others: the file-lock pattern pytest-xdist documents for an expensive fixture (here, trained
    runs and comparisons). ``build`` writes under ``folder`` and returns something picklable (paths, numbers);
    the tests only read what it made."""
    import os
    import pickle
    import shutil

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session
    done = base / f"{name}.pickle"
    with FileLock(str(done) + ".lock"):
        if done.is_file():
            return pickle.loads(done.read_bytes())
        folder = base / name
        shutil.rmtree(folder, ignore_errors=True)  # what a build that failed in another worker left
        folder.mkdir()
        value = build(folder)
        done.write_bytes(pickle.dumps(value))
        return value

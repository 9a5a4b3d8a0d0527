"""One experiment: build everything from a Config, train, and write the run directory.

Run directory contents:
  config.yaml    the resolved config (after --set overrides)
  summary.txt    torchinfo summary
  metrics.jsonl  one JSON line per epoch
  results.json   params, mult-adds, best/final accuracy, timings, inference latency
  last.pt, best.pt  model state dicts (``torch.load`` + ``load_state_dict``)
"""
from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from config import Config, dump_config
from data import DatasetSpec, ImageData, get_spec, load_dataset
from data.augment import Mixer, train_transform
from data.datasets import default_cache_dir
from errors import UserError
from models import MODELS, create_model
from models.registry import DATASET_KEYS
from train.engine import NonFiniteLoss, Precision, evaluate, latency_ms, train_one_epoch
from train.loader import TensorLoader
from train.schedule import build_optimizer, build_scheduler


@dataclass
class ModelInfo:
    params: int
    mult_adds: int
    summary: str


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: 'cuda' requested but CUDA is not available here; valid: auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(cfg: Config, spec: Optional[DatasetSpec] = None) -> nn.Module:
    spec = spec or get_spec(cfg.data.name)
    # Checked before the call, so a dataset-owned key (num_classes, ...) gets the usual one-line error.
    MODELS.check_kwargs(cfg.model.name, cfg.model.kwargs, "model", reserved=DATASET_KEYS)
    seed_everything(cfg.seed)  # same seed -> same initial weights
    return create_model(cfg.model.name, num_classes=spec.num_classes, in_chans=spec.in_chans,
                        image_size=spec.image_size, **cfg.model.kwargs)


def describe(model: nn.Module, spec: DatasetSpec, depth: int = 4) -> ModelInfo:
    """torchinfo summary for one image of the dataset's shape (mult-adds are per image)."""
    import torchinfo

    device = next(model.parameters()).device
    stats = torchinfo.summary(model, input_size=(1, spec.in_chans, spec.image_size, spec.image_size),
                              col_names=("output_size", "num_params", "mult_adds"), depth=depth,
                              device=device, mode="eval", verbose=0)
    return ModelInfo(stats.total_params, int(stats.total_mult_adds), str(stats))


def new_run_dir(root: str | Path, name: str) -> Path:
    """A fresh directory ``root/name-YYYYmmdd-HHMMSS[-k]``; an existing one is never reused."""
    root = Path(root).expanduser()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        path = root / (f"{name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"output.dir: cannot create {path} ({e.strerror})") from None
    raise UserError(f"output.dir: too many runs named {name} at {stamp} in {root}")


def atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """Write to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def load_data(cfg: Config) -> ImageData:
    d = cfg.data
    cache = (Path(d.cache_dir) if d.cache_dir else default_cache_dir()) if d.cache else None
    return load_dataset(d.name, d.root, download=d.download, limit_train=d.limit_train,
                        limit_val=d.limit_val, cache_dir=cache)


def make_loaders(cfg: Config, data: ImageData, device: torch.device, channels_last: bool = False):
    spec = data.spec
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    common = dict(mean=spec.mean, std=spec.std, image_size=spec.image_size, channels_last=channels_last)
    transform = train_transform(spec.augment if cfg.data.augment else "none", spec.image_size,
                                cfg.data.auto_augment)
    train = TensorLoader(*data.train, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                         transform=transform, generator=gen, erase_prob=cfg.data.random_erasing, **common)
    val = TensorLoader(*data.val, batch_size=cfg.train.eval_batch_size, **common)
    if len(train) == 0:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} is larger than the {len(data.train[1])} "
                        f"training samples; lower it or raise data.limit_train")
    return train, val


@dataclass
class Setup:
    """Everything one training run (or the benchmark) steps through."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    criterion: nn.Module
    precision: Precision
    train_loader: TensorLoader
    val_loader: TensorLoader
    mixer: Optional[Mixer]
    channels_last: bool


def prepare(cfg: Config, model: nn.Module, data: ImageData, device: torch.device) -> Setup:
    """Model on the device (NHWC, compiled if asked), loaders, optimizer, schedule, loss, precision."""
    t = cfg.train
    # NHWC measured 3-22% faster for every conv net on a 2-core CPU, neutral for ViTs (BENCHMARKS.md).
    channels_last = t.channels_last is not False
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    train_loader, val_loader = make_loaders(cfg, data, device, channels_last=channels_last)
    optimizer = build_optimizer(model, t, fused=device.type == "cuda")
    precision = Precision.for_device(device, t.amp)
    mixer = (Mixer(data.spec.num_classes, mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, seed=cfg.seed)
             if t.mixup_alpha > 0 or t.cutmix_alpha > 0 else None)
    return Setup(
        model=torch.compile(model, mode=t.compile_mode) if t.compile else model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, t, len(train_loader)),
        scaler=torch.amp.GradScaler("cuda") if precision.needs_scaler else None,
        criterion=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
        precision=precision, train_loader=train_loader, val_loader=val_loader, mixer=mixer,
        channels_last=channels_last,
    )


def format_epoch(m: dict[str, Any], epochs: int) -> str:
    top5 = f" top-5 {m['val_top5']:.2f}%" if "val_top5" in m else ""
    return (f"epoch {m['epoch']:>{len(str(epochs))}}/{epochs}  train loss {m['train_loss']:.4f} "
            f"acc {m['train_acc']:.2f}%  val loss {m['val_loss']:.4f} acc {m['val_acc']:.2f}%{top5}  "
            f"lr {m['lr']:.2e}  {m['epoch_time_s']:.1f}s  {m['images_per_s']:.0f} img/s")


def fit(cfg: Config, *, log=print, progress: Optional[bool] = None,
        started: Optional[Callable[[Path], None]] = None) -> tuple[Path, dict[str, Any]]:
    """Train ``cfg`` end to end. Returns (run directory, results). Raises UserError / NonFiniteLoss.

    ``started`` is called with the run directory as soon as it exists (a sweep records it, so a run
    that fails later can still be compared).
    """
    if progress is None:
        progress = sys.stderr.isatty()
    device = resolve_device(cfg.train.device)
    spec = get_spec(cfg.data.name)
    model = build_model(cfg, spec)
    info = describe(model, spec)
    log(f"loading {cfg.data.name} from {cfg.data.root}")
    data = load_data(cfg).to(device)  # before the run dir: a missing dataset leaves nothing behind
    s = prepare(cfg, model, data, device)
    train_loader, val_loader, precision = s.train_loader, s.val_loader, s.precision

    run_dir = new_run_dir(cfg.output.dir, cfg.run_name)
    if started is not None:
        started(run_dir)
    atomic_write(run_dir / "config.yaml", dump_config(cfg))
    atomic_write(run_dir / "summary.txt", info.summary + "\n")
    log(info.summary)
    log(f"run dir: {run_dir}\ndevice: {device} ({precision}{', channels_last' if s.channels_last else ''}"
        f"{', compiled' if cfg.train.compile else ''}), "
        f"{len(data.train[1])} train / {len(data.val[1])} val images, {len(train_loader)} steps/epoch")

    eval_criterion = nn.CrossEntropyLoss()

    results: dict[str, Any] = {
        "name": cfg.run_name, "model": cfg.model.name, "dataset": cfg.data.name,
        "params": info.params, "mult_adds": info.mult_adds, "device": str(device), "precision": str(precision),
        "torch": torch.__version__, "status": "running",
    }
    best_acc, best_epoch, history = -1.0, 0, []
    train_time = 0.0
    metrics_file = open(run_dir / "metrics.jsonl", "a")
    try:
        for epoch in range(1, cfg.train.epochs + 1):
            desc = f"epoch {epoch}/{cfg.train.epochs}"
            try:
                tr = train_one_epoch(s.model, train_loader, s.optimizer, s.scheduler, s.criterion, device=device,
                                     precision=precision, scaler=s.scaler, grad_clip=cfg.train.grad_clip,
                                     log_every=cfg.train.log_every, progress=progress, desc=desc, mixer=s.mixer)
            except NonFiniteLoss as e:
                results.update(status="diverged", error=f"epoch {epoch}: {e}")
                raise NonFiniteLoss(f"epoch {epoch}: {e}") from None
            ev = evaluate(s.model, val_loader, eval_criterion, device=device, precision=precision,
                          progress=progress, top5=cfg.train.top5)
            train_time += tr["train_time_s"]
            row = {"epoch": epoch, "train_loss": tr["train_loss"], "train_acc": tr["train_acc"],
                   "val_loss": ev["val_loss"], "val_acc": ev["val_acc"], "lr": tr["lr"],
                   "epoch_time_s": tr["train_time_s"] + ev["eval_time_s"], "images_per_s": tr["images_per_s"]}
            if "val_top5" in ev:
                row["val_top5"] = ev["val_top5"]
            history.append(row)
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            log(format_epoch(row, cfg.train.epochs))
            if cfg.output.checkpoints:
                save_checkpoint(model, run_dir / "last.pt")
            if row["val_acc"] > best_acc:
                best_acc, best_epoch = row["val_acc"], epoch
                if cfg.output.checkpoints:
                    save_checkpoint(model, run_dir / "best.pt")
        rates = sorted(r["images_per_s"] for r in history)
        # Inference latency of the trained model (eager, even when training was compiled).
        latency = {f"latency_ms_{k}": latency_ms(model, spec, device, precision, batch, s.channels_last)
                   for k, batch in (("batch1", 1), ("batched", cfg.train.eval_batch_size))}
        results.update(
            **latency,
            latency_batch_size=cfg.train.eval_batch_size,
            status="completed",
            epochs=cfg.train.epochs,
            best_val_acc=best_acc,
            best_epoch=best_epoch,
            final_val_acc=history[-1]["val_acc"],
            final_val_loss=history[-1]["val_loss"],
            **({"final_val_top5": history[-1]["val_top5"]} if cfg.train.top5 else {}),
            final_train_loss=history[-1]["train_loss"],
            train_time_s=train_time,
            images_per_s=rates[len(rates) // 2],
        )
        return run_dir, results
    finally:
        metrics_file.close()
        if results["status"] == "running":  # Ctrl-C or an unexpected error: say so, keep what was logged
            results["status"] = "interrupted"
        atomic_write(run_dir / "results.json", json.dumps(results, indent=2) + "\n")

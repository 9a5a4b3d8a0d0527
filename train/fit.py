"""One experiment: build everything from a Config, train epoch by epoch, and record it in a ``RunDir``."""
from __future__ import annotations

import statistics
import sys
import traceback
from typing import Any, Callable, Optional

import torch

from config import Config, dump_config
from core.errors import UserError
from data import get_spec, load_data
from models import build_model
from models.measure import describe
from train.engine import NonFiniteLoss, evaluate, train_one_epoch
from train.rundir import RunDir
from train.setup import prepare, resolve_device, seed_everything


def format_epoch(m: dict[str, Any], epochs: int) -> str:
    top5 = f" top-5 {m['val_top5']:.2f}%" if "val_top5" in m else ""
    return (f"epoch {m['epoch']:>{len(str(epochs))}}/{epochs}  train loss {m['train_loss']:.4f} "
            f"acc {m['train_acc']:.2f}%  val loss {m['val_loss']:.4f} acc {m['val_acc']:.2f}%{top5}  "
            f"lr {m['lr']:.2e}  {m['epoch_time_s']:.1f}s  {m['images_per_s']:.0f} img/s")


def fit(cfg: Config, run_dir: RunDir, *, log: Callable[[str], None] = print,
        progress: Optional[bool] = None) -> dict[str, Any]:
    """Train ``cfg`` end to end into ``run_dir``; returns results.json's content.

    Bad input (unknown model, missing dataset, ...) raises ``UserError`` before the directory exists.
    Once it exists, every way out records its own status in results.json: ``completed``, ``diverged``
    (``NonFiniteLoss`` is re-raised), ``interrupted`` (Ctrl-C, re-raised) or ``failed`` (re-raised).
    """
    if progress is None:
        progress = sys.stderr.isatty()
    seed_everything(cfg.seed)  # the one place a run is seeded: initial weights, dropout, MixUp/CutMix
    device = resolve_device(cfg.train.device)
    spec = get_spec(cfg.data.name)
    model = build_model(cfg, spec)
    info = describe(model, spec)
    log(f"loading {cfg.data.name} from {cfg.data.root}")
    data = load_data(cfg.data).to(device)
    s = prepare(cfg, model, data, device)

    path = run_dir.create()
    try:
        run_dir.update("running", model=cfg.model.name, dataset=cfg.data.name, params=info.params,
                       mult_adds=info.mult_adds, device=str(device), precision=str(s.precision),
                       torch=torch.__version__, epochs=cfg.train.epochs)
        run_dir.write("config.yaml", dump_config(cfg))
        run_dir.write("summary.txt", info.summary + "\n")
        log(info.summary)
        log(f"run dir: {path}\ndevice: {s.describe()}, {len(data.train[1])} train / {len(data.val[1])} val "
            f"images, {len(s.train_loader)} steps/epoch")
        history = _epochs(cfg, s, run_dir, log, progress)
        return run_dir.update("completed", **_summary(cfg, history))
    except NonFiniteLoss as e:
        run_dir.update("diverged", error=str(e))
        raise
    except KeyboardInterrupt:
        run_dir.update("interrupted", error="interrupted by the user (Ctrl-C)")
        raise
    except BaseException as e:
        first = (str(e).strip().splitlines() or [""])[0]
        run_dir.update("failed", error=first if isinstance(e, UserError) else f"{type(e).__name__}: {first}",
                       traceback=traceback.format_exc())
        raise


def _summary(cfg: Config, history: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json's numbers from the per-epoch metrics."""
    best = max(history, key=lambda r: r["val_acc"])  # the first epoch with the best accuracy
    last = history[-1]
    return dict(
        best_val_acc=best["val_acc"], best_epoch=best["epoch"],
        final_val_acc=last["val_acc"], final_val_loss=last["val_loss"],
        **({"final_val_top5": last["val_top5"]} if cfg.train.top5 else {}),
        final_train_loss=last["train_loss"],
        train_time_s=sum(r["train_time_s"] for r in history),
        images_per_s=statistics.median(r["images_per_s"] for r in history),
    )


def _epochs(cfg: Config, s, run_dir: RunDir, log, progress: bool) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    best_acc = -1.0
    for epoch in range(1, cfg.train.epochs + 1):
        try:
            tr = train_one_epoch(s, log_every=cfg.train.log_every, progress=progress,
                                 desc=f"epoch {epoch}/{cfg.train.epochs}")
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"epoch {epoch}: {e}") from None
        ev = evaluate(s, top5=cfg.train.top5, progress=progress)
        row = {"epoch": epoch, "train_loss": tr["train_loss"], "train_acc": tr["train_acc"],
               "val_loss": ev["val_loss"], "val_acc": ev["val_acc"], "lr": tr["lr"],
               "epoch_time_s": tr["train_time_s"] + ev["eval_time_s"], "train_time_s": tr["train_time_s"],
               "images_per_s": tr["images_per_s"], **({"val_top5": ev["val_top5"]} if "val_top5" in ev else {})}
        history.append(row)
        run_dir.log_epoch(row)
        log(format_epoch(row, cfg.train.epochs))
        if cfg.output.checkpoints:
            run_dir.save_weights("last.pt", s.module)
            if row["val_acc"] > best_acc:
                run_dir.save_weights("best.pt", s.module)
        best_acc = max(best_acc, row["val_acc"])
    return history

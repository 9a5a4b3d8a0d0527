"""A run's trained model, rebuilt from its ``config.yaml`` with a checkpoint's weights: what ``--eval``,
``--predict``, the attention and feature maps and the latency measurement all start from."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch.nn as nn

from config import Config
from core.errors import UserError
from data import get_spec
from models import build_model
from models.weights import load_weights
from train.resume import run_config
from train.rundir import config_run_id, read_results

CHECKPOINTS = ("best", "last")
CHOICES = (*CHECKPOINTS, "best_ema")  # --ckpt; best_ema.pt: the weight EMA's best epoch (train.ema_decay)


def checkpoint_file(path: Path, which: Optional[str] = None) -> Optional[Path]:
    """``best.pt`` or ``last.pt`` (``which``), or with ``which=None`` the first of them that exists."""
    for name in (which,) if which else CHECKPOINTS:
        if (path / f"{name}.pt").is_file():
            return path / f"{name}.pt"
    return None


def load_model(path: str | Path, which: Optional[str] = "best") -> tuple[Config, nn.Module, Path]:
    """The run's model with ``which`` (``best``, ``last``; None: best.pt, else last.pt) loaded, in eval mode,
    with its config and the checkpoint's path. Everything read is untrusted: a problem is one ``UserError``."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory")
    cfg = run_config(path)
    file = checkpoint_file(path, which)
    if file is None:
        why = "train.ema_decay was 0, " if which == "best_ema" and not cfg.train.ema_decay else ""
        raise UserError(f"{path / ((which or 'best') + '.pt')}: not found ({why}the run wrote no checkpoints, or was "
                        f"stopped before its first epoch ended)")
    model = build_model(cfg, get_spec(cfg.data.name))
    theirs = load_weights(model, file, f"{cfg.model.name} on {cfg.data.name}")
    own = (read_results(path) or {}).get("run_id") or config_run_id(path / "config.yaml")
    if theirs and own and theirs != own:
        raise UserError(f"{file}: names run {theirs}, not this directory's run {own}: a checkpoint copied from "
                        f"another run; its numbers would not be this run's")
    return cfg, model.eval(), file

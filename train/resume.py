"""Opening a run directory written before to continue it (``--resume``); its config is also what
``evaluate`` rebuilds the run's model from. Everything read here is treated as untrusted and fails with one
line."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from config import Config, apply_override, from_dict, read_yaml
from core.errors import UserError
from train import checkpoint
from train.rundir import RunDir, is_live, read_results


def anchor_paths(config: dict[str, Any], cwd: Optional[str]) -> dict[str, Any]:
    """A config (raw dict) with its relative paths (output.dir, data.root, data.cache_dir) taken from ``cwd``,
    where the run or call started, so a resume started in another directory finds the same files."""
    config = copy.deepcopy(config)
    for section, key in (("output", "dir"), ("data", "root"), ("data", "cache_dir")):
        node = config.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if cwd and isinstance(value, str) and not Path(value).expanduser().is_absolute():
            node[key] = str(Path(cwd) / value)
    return config


def run_config(path: Path, overrides: list[str] = ()) -> Config:
    """The run's own config.yaml (relative paths from where it ran, ``--set`` overrides applied), as
    validated as any --cfg file."""
    file = path / "config.yaml"
    if not file.is_file():
        raise UserError(f"{path}: no config.yaml; not a run directory written by main.py")
    cwd = (read_results(path) or {}).get("cwd")
    raw = anchor_paths(read_yaml(file), cwd if isinstance(cwd, str) else None)
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return from_dict(raw)
    except UserError as e:
        raise UserError(f"{file}: {e}") from None


@dataclass
class Resumption:
    cfg: Config
    run_dir: RunDir
    ckpt: Optional[dict[str, Any]]  # None: no last.pt, the run starts over in its directory
    done: bool  # completed and not extended: nothing to train


def open_for_resume(path: str | Path, overrides: list[str] = (), on_epoch=()) -> Resumption:
    """Check that the run in ``path`` can continue with ``overrides`` and load its last.pt; ``on_epoch``:
    listeners of its ``RunDir``."""
    path = Path(path).expanduser()
    run_dir = RunDir.existing(path, on_epoch=on_epoch)
    results = run_dir.results
    if is_live(results):
        raise UserError(f"--resume {path}: still running (pid {results.get('pid')} on this host); "
                        f"stop it first (kill -TERM {results.get('pid')} writes a resumable checkpoint)")
    cfg = run_config(path, overrides)
    last = path / "last.pt"
    if not last.exists():
        if results.get("status") == "completed":
            raise UserError(f"--resume {path}: completed without a last.pt (output.checkpoints was off); "
                            f"nothing to continue from")
        return Resumption(cfg, run_dir, None, done=False)
    ckpt = checkpoint.load_training_state(last)
    try:
        saved = from_dict(ckpt["config"])
    except UserError as e:
        raise UserError(f"{last}: its config is not valid here ({e})") from None
    checkpoint.check_resumable(saved, cfg, ckpt["epoch"], str(path))
    done = ckpt["epoch"] >= cfg.train.epochs and results.get("status") == "completed"
    return Resumption(cfg, run_dir, ckpt, done)

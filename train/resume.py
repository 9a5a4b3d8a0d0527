"""Opening a run directory written before to continue it (``--resume``); its config is also what
``evaluate`` rebuilds the run's model from. Everything read here is treated as untrusted and fails with one
line."""
from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from config import Config, apply_override, from_dict, read_yaml
from core.status import PRUNED
from core.errors import UserError
from core.log import get_logger
from train import checkpoint
from train.rundir import RunDir, config_run_id, is_live, read_results
from train.stopping import stop_reason

log = get_logger(__name__)


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


def _run_id(path: Path, results: dict[str, Any]) -> Optional[str]:
    """The run this directory belongs to, as results.json and config.yaml say (None: a run from before run ids);
    both must agree."""
    recorded = results.get("run_id")
    named = config_run_id(path / "config.yaml")
    if recorded and named and recorded != named:
        raise UserError(f"{path}: results.json names run {recorded} and config.yaml run {named}; one of them was "
                        f"copied from another run: put back this run's own file")
    return recorded or named


@dataclass
class Resumption:
    cfg: Config
    run_dir: RunDir
    ckpt: Optional[dict[str, Any]]  # None: no last.pt, the run starts over in its directory
    done: bool  # completed and not extended, or stopped early and still stopping there: nothing to train
    done_note: str = ""  # why there is nothing to train, and how to train on


def open_for_resume(path: str | Path, overrides: list[str] = (), on_epoch=(), *, claim: bool = True,
                    follower: bool = False) -> Resumption:
    """Check that the run in ``path`` can continue with ``overrides`` and load its last.pt; ``on_epoch``:
    listeners of its ``RunDir``. ``claim``: hold the run's lock from now on (``RunDir.existing``; a process
    that writes it already is a one-line error); without it, a run another process writes is refused all the
    same. ``follower``: a process other than rank 0 of a several-process run, which neither claims nor checks
    (rank 0 holds the lock for all of them)."""
    path = Path(path).expanduser()
    run_dir = RunDir.existing(path, on_epoch=on_epoch, claim=claim and not follower)
    try:
        return _open(path, run_dir, overrides, check_live=not follower)
    except BaseException:
        run_dir.release()
        raise


def _open(path: Path, run_dir: RunDir, overrides: list[str], check_live: bool) -> Resumption:
    results = run_dir.results
    if check_live and not run_dir.lock and is_live(results, path):
        raise UserError(f"--resume {path}: still running (pid {results.get('pid')} on {results.get('host')}); "
                        f"stop it first (kill -TERM {results.get('pid')} writes a resumable checkpoint)")
    cfg = run_config(path, overrides)
    own = _run_id(path, results)
    last = path / "last.pt"
    if not last.exists():
        if results.get("status") == "completed":
            raise UserError(f"--resume {path}: completed without a last.pt (output.checkpoints was off); "
                            f"nothing to continue from")
        if own:
            results["run_id"] = own
        return Resumption(cfg, run_dir, None, done=False)
    ckpt = checkpoint.load_training_state(last)
    if ckpt.get("run_id") != own:
        theirs = f"run {ckpt['run_id']}" if ckpt.get("run_id") else "no run"
        raise UserError(f"{last}: names {theirs}, not this directory's run {own or '(unnamed)'}: a checkpoint "
                        f"copied from another run is not continued; put back this run's own last.pt, or remove it "
                        f"to train the run again from epoch 1")
    if "status" not in results and ckpt.get("results"):  # results.json deleted or unreadable: rebuilt whole
        run_dir.results = results = {**ckpt["results"], "status": "interrupted"}
        run_dir.name = results.get("name") or run_dir.name
        log.warning(f"warning: {path / 'results.json'} was missing or unreadable; rebuilt from last.pt "
                    f"({checkpoint.describe_position(ckpt['epoch'], ckpt['step'])})")
    try:
        saved = from_dict(ckpt["config"])
    except UserError as e:
        raise UserError(f"{last}: its config is not valid here ({e})") from None
    checkpoint.check_resumable(saved, cfg, ckpt["epoch"], str(path))
    status, quoted = results.get("status"), shlex.quote(str(path))
    if status == "completed" and ckpt["epoch"] >= cfg.train.epochs:
        return Resumption(cfg, run_dir, ckpt, True, f"{path}: already completed all {cfg.train.epochs} epochs; to "
                                                    f"train longer: python main.py --resume {quoted} "
                                                    f"--set train.epochs=N")
    # Stopped early, and the same config (or a shorter patience) stops it there again: nothing to train.
    why = stop_reason(ckpt["history"], cfg.train, ckpt.get("patience_from", 0))
    if status == "stopped_early" and why and cfg.train.epochs == saved.train.epochs:
        return Resumption(cfg, run_dir, ckpt, True, f"{path}: stopped early after epoch {ckpt['epoch']} ({why}); to "
                                                    f"train on: python main.py --resume {quoted} --set "
                                                    f"train.early_stopping_patience=N (more, or 0: off), or --set "
                                                    f"train.epochs=N (longer: patience counts anew)")
    if status == PRUNED and cfg.train.epochs == saved.train.epochs:
        return Resumption(cfg, run_dir, ckpt, True, f"{path}: a trial its search pruned after epoch {ckpt['epoch']} "
                                                    f"({results.get('stop_reason')}); to train it on regardless: "
                                                    f"python main.py --resume {quoted} --set train.epochs=N")
    return Resumption(cfg, run_dir, ckpt, False)

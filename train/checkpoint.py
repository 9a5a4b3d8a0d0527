"""The whole training state in one file (``last.pt``), and safe reading of every checkpoint.

``last.pt`` holds everything that decides what the run computes next, so ``--resume`` continues
bit for bit where the run stopped (an epoch's end, or mid-epoch: ``output.checkpoint_every_steps``,
``output.checkpoint_every_minutes``, or a stop signal):

  model, optimizer, scheduler, scaler   their state dicts
  ema                                   train.ema_decay: the weight EMA's state dict (None when off)
  epoch, step, global_step              epochs finished, optimizer steps into the next one, steps in all
  meter                                 the unfinished epoch's running loss / accuracy sums and time
  loader                                the training loader's position and generator (order + augmentation)
  rng                                   Python's, torch's CPU and every CUDA generator (init, dropout, MixUp/CutMix)
  world_size, ranks                     with several processes (torchrun): each one's meter, loader and rng
                                        (the top-level ones are rank 0's); a resume needs the same count
  history, best_acc, best_epoch         metrics.jsonl's rows so far: the log is rebuilt from them on resume
  best_acc_ema, best_epoch_ema          the same for the EMA (val_acc_ema)
  patience_from                         the epoch early stopping counts from (train/stopping.py; 0, or where
                                        a run that stopped early was extended)
  config, fingerprint                   the resolved config and a hash of every key that changes the math
  data                                  each split's size and a hash of its images (a resume on other data
                                        is refused: ``check_data``)
  threads                               torch's thread count (a resume uses it: ``use_threads``)
  run_id, results                       the run it belongs to, and its results.json when saved (to rebuild it)

``best.pt`` stays a plain ``state_dict`` (its metadata names its run: ``models.weights.run_id_of``). Every read
goes through ``torch.load(weights_only=True)`` (tensors and plain containers only, no code) and a damaged or
foreign file is a one-line ``UserError``.
"""
from __future__ import annotations

import hashlib
import json
import random
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from config import Config
from core.errors import UserError
from core.files import strict_json
from core.log import get_logger
from core.text import flatten
from models.weights import read

FORMAT = "vitlab-checkpoint-1"

# Keys a resume may change: none of them alters a number the run computes. ``train.epochs`` may also
# grow, to extend a run; the schedule is then rebuilt for the new length (see ``restore``). Early stopping's keys
# only decide after which epoch the run ends (from its history: train/stopping.py), as a longer train.epochs does.
# ``output.checkpoints`` may not: turned off, it would leave a last.pt behind that the run has passed.
FREE_KEYS = ("train.log_every", "train.early_stopping_patience", "train.early_stopping_min_delta", "output.dir",
             "output.checkpoint_every_steps", "output.checkpoint_every_minutes", "output.tensorboard", "output.latency",
             "output.latency_threads",
             "data.root", "data.download", "data.cache", "data.cache_dir")

log = get_logger(__name__)


FREE_SECTIONS = ("slurm.",)  # how a cluster runs it: never what it computes


def math_keys(cfg: Config) -> dict[str, Any]:
    """The resolved config's keys that decide what the run computes (all but ``FREE_KEYS``, epochs)."""
    flat = flatten(cfg.to_dict())
    return {k: v for k, v in flat.items()
            if k not in FREE_KEYS and k != "train.epochs" and not k.startswith(FREE_SECTIONS)}


def fingerprint(cfg: Config) -> str:
    text = json.dumps(math_keys(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_resumable(saved: Config, cfg: Config, epochs_done: int, where: str) -> None:
    """Refuse a resume whose config would change the math; ``cfg`` may differ from ``saved`` in FREE_KEYS
    and in a ``train.epochs`` that is at least the saved one."""
    old, new = math_keys(saved), math_keys(cfg)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key) and key == "train.threads":
            raise UserError(f"--resume {where}: train.threads is {new.get(key)!r} but the run used {old.get(key)!r}; "
                            f"a resumed run keeps the threads it started with (the count changes the order of a "
                            f"CPU's sums, so the numbers); leave train.threads out, or start a new run")
        if old.get(key) != new.get(key):
            raise UserError(f"--resume {where}: {key} is {new.get(key)!r} but the run used {old.get(key)!r}; "
                            f"a resumed run keeps its config except a longer train.epochs and "
                            f"{', '.join(FREE_KEYS)}")
    if cfg.train.epochs < saved.train.epochs:
        raise UserError(f"--resume {where}: train.epochs {cfg.train.epochs} is shorter than the run's "
                        f"{saved.train.epochs}; it may only grow (to extend the run)")
    if cfg.train.epochs < epochs_done:
        raise UserError(f"--resume {where}: train.epochs {cfg.train.epochs} < {epochs_done} epochs already done")


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        if torch.cuda.device_count() != len(state["cuda"]):
            warnings.warn(f"the checkpoint has {len(state['cuda'])} CUDA generators and this machine "
                          f"{torch.cuda.device_count()} GPUs: CUDA random numbers will not continue exactly")
        else:
            torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- files


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A ``last.pt`` written by ``capture``, checked for the keys ``restore`` needs."""
    ckpt = read(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        holds = "a plain state dict (model weights only)" if isinstance(ckpt, dict) and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()) else f"a {type(ckpt).__name__}"
        raise UserError(f"{path}: holds {holds}, not a training checkpoint ({FORMAT}); "
                        f"--resume needs the run's last.pt")
    missing = [k for k in ("model", "optimizer", "scheduler", "epoch", "step", "rng", "loader", "history", "config")
               if k not in ckpt]
    if missing:
        raise UserError(f"{path}: training checkpoint without {', '.join(missing)} (damaged); start the run again")
    return ckpt


# ----------------------------------------------------------------------------- capture / restore


def capture(s, cfg: Config, *, epoch: int, step: int, global_step: int, meter, history: list[dict[str, Any]],
            best_acc: float, best_epoch: int, run: Optional[dict[str, Any]] = None,
            data: Optional[dict[str, Any]] = None, best_acc_ema: float = -1.0, best_epoch_ema: int = 0,
            patience_from: int = 0) -> Optional[dict[str, Any]]:
    """The training state after ``epoch`` finished epochs and ``step`` steps into the next (all on the CPU).
    ``run``: results.json's content (its ``run_id`` names the run; the rest rebuilds a lost results.json);
    ``data``: the data's fingerprint (``ImageData.fingerprint``). With several processes every one must call
    it (it gathers their own states); rank 0 gets the checkpoint, the others None."""
    own = {"meter": meter.state_dict() if step else None, "loader": s.train_loader.state_dict(), "rng": rng_state()}
    ranks = s.dist.gather(own)
    if ranks is None:
        return None
    return {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "fingerprint": fingerprint(cfg),
        "epoch": epoch, "step": step, "global_step": global_step,
        "model": {k: v.detach().cpu() for k, v in s.module.state_dict().items()},
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "ema": {k: v.detach().cpu() for k, v in s.ema.state_dict().items()} if s.ema is not None else None,
        **own,
        "world_size": s.dist.world_size,
        **({"ranks": ranks} if s.dist.enabled else {}),
        "history": list(history), "best_acc": best_acc, "best_epoch": best_epoch,
        "best_acc_ema": best_acc_ema, "best_epoch_ema": best_epoch_ema, "patience_from": patience_from,
        "device": str(s.device), "precision": str(s.precision), "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "run_id": (run or {}).get("run_id"), "results": json.loads(strict_json(run or {})), "data": data,
    }


def use_threads(ckpt: dict[str, Any]) -> Optional[int]:
    """Train with the torch threads the run used (a thread count changes the order of a CPU's reductions, so
    the numbers): returns the count this process had, to put back when the run ends (None: unchanged)."""
    saved, here = ckpt.get("threads"), torch.get_num_threads()
    if not isinstance(saved, int) or saved < 1 or saved == here:
        return None
    torch.set_num_threads(saved)
    log.info(f"threads: {saved}, as the run used (this process would use {here}); the numbers continue the run's")
    return here


def check_data(ckpt: dict[str, Any], now: dict[str, Any], where: str) -> None:
    """Refuse to continue a run on other data than it trained on (``ImageData.fingerprint``)."""
    saved = ckpt.get("data")
    if not isinstance(saved, dict) or saved == now:
        return
    changes = []
    for split in ("train", "val"):
        old, new = saved.get(split) or {}, now.get(split) or {}
        if old.get("images") != new.get("images"):
            changes.append(f"{split}: {new.get('images')} images, the run had {old.get('images')}")
        elif old.get("hash") != new.get("hash"):
            changes.append(f"{split}: other images or labels")
    raise UserError(f"--resume {where}: the data differs from what the run trained on ({'; '.join(changes)}); "
                    f"check data.root (and data.limit_train / data.limit_val), or add --allow-data-change to "
                    f"continue on this data anyway")


def restore(s, ckpt: dict[str, Any], cfg: Config) -> None:
    """Put ``ckpt`` back into a freshly prepared setup ``s`` (built from ``cfg``).

    With the same ``train.epochs`` everything is restored as saved. A longer run rebuilds the schedule
    for its new length and moves it to the checkpoint's step, so the lr follows the new schedule from
    there (the cosine of a 100-epoch run continued to 200 jumps back up: the shape a 200-epoch run has).
    """
    world = ckpt.get("world_size", 1)
    if world != s.dist.world_size:
        how = f"torchrun --nproc_per_node={world} main.py --resume DIR" if world > 1 else "python main.py --resume DIR"
        raise UserError(f"--resume: the run trained on {world} process(es) (global batch {world} x "
                        f"train.batch_size) and this is {s.dist.world_size}; resume it the way it ran: {how}")
    ckpt = own_state(ckpt, s.dist)
    if ckpt["device"].split(":")[0] != s.device.type or ckpt["precision"] != str(s.precision):
        log.info(f"warning: the run trained on {ckpt['device']} ({ckpt['precision']}) and resumes on {s.device} "
            f"({s.precision}): numbers will not equal an uninterrupted run bit for bit")
    s.module.load_state_dict(ckpt["model"])
    saved_epochs = ckpt["config"]["train"]["epochs"]
    extended = cfg.train.epochs != saved_epochs
    if extended:
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore")
            for _ in range(ckpt["global_step"]):
                s.scheduler.step()
    s.optimizer.load_state_dict(ckpt["optimizer"])
    if extended:
        for group, lr in zip(s.optimizer.param_groups, s.scheduler.get_last_lr()):
            group["lr"] = lr
    else:
        s.scheduler.load_state_dict(ckpt["scheduler"])
    if s.scaler is not None and ckpt.get("scaler"):
        s.scaler.load_state_dict(ckpt["scaler"])
    if s.ema is not None:  # train.ema_decay is in the fingerprint: the run had an EMA too
        s.ema.load_state_dict(ckpt["ema"])
    s.train_loader.load_state_dict(ckpt["loader"])
    set_rng_state(ckpt["rng"])


def own_state(ckpt: dict[str, Any], dist) -> dict[str, Any]:
    """``ckpt`` with this process's meter, loader and generators (several processes: its entry in ``ranks``)."""
    return {**ckpt, **ckpt["ranks"][dist.rank]} if dist.enabled else ckpt


def describe_position(epoch: int, step: int, steps_per_epoch: Optional[int] = None) -> str:
    if not step:
        return f"after epoch {epoch}"
    total = f"/{steps_per_epoch}" if steps_per_epoch else ""
    return f"in epoch {epoch + 1} at step {step}{total}"

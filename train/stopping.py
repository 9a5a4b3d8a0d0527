"""Early stopping on validation accuracy, decided from the run's history alone (metrics.jsonl's rows, which
last.pt keeps), so a resumed run stops where an uninterrupted one does.

An epoch improves when its ``val_acc`` beats the best improving epoch's by more than ``min_delta``
(Lightning's ``EarlyStopping(mode="max")``); the run stops once ``patience`` epochs in a row did not, before
its last epoch (a stop after the last epoch is just the end: ``completed``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from config import TrainConfig

# Asked after each epoch but the last, with the run's history so far: a reason to stop there, or None (a search's
# pruner, launch/tune.py; the run then ends ``pruned``).
Stopper = Callable[[list[dict[str, Any]]], Optional[str]]


def last_improvement(history: list[dict[str, Any]], min_delta: float) -> int:
    """The epoch of the last improvement (0 before the first epoch)."""
    best, epoch = None, 0
    for row in history:
        if best is None or row["val_acc"] > best + min_delta:
            best, epoch = row["val_acc"], row["epoch"]
    return epoch


def stop_reason(history: list[dict[str, Any]], t: TrainConfig, counted_from: int = 0) -> Optional[str]:
    """Why the run stops after the last epoch of ``history`` (None: it goes on). ``counted_from``: the epoch
    from which epochs without improvement count (a run extended after it stopped early counts anew from
    where it stopped)."""
    if not t.early_stopping_patience or not history or history[-1]["epoch"] >= t.epochs:
        return None
    best = last_improvement(history, t.early_stopping_min_delta)
    done = history[-1]["epoch"]
    if done - max(best, counted_from) < t.early_stopping_patience:
        return None
    delta = f" by more than {t.early_stopping_min_delta:g}" if t.early_stopping_min_delta else ""
    return (f"val acc has not improved{delta} in the {done - best} epoch(s) after epoch {best} "
            f"(train.early_stopping_patience: {t.early_stopping_patience})")

"""TensorBoard event files for one run (``output.tensorboard``, on by default), in the run directory itself
(``RUN_DIR/events.out.tfevents.*``), so that ``tensorboard --logdir runs/`` lists each run under its own
name, the run directory's, as it lists Lightning's version folders (in a ``tb/`` folder, every run was
``<run>/tb``). A run started before keeps writing into its ``tb/`` when resumed, so its curves stay one run.

  train/loss, train/acc, train/lr    every ``train.log_every`` steps: the epoch's running mean so far, from
                                     the host sync the loop does there anyway (the progress bar's readout)
  epoch/<field>                      once per epoch: the metrics.jsonl row (val_loss, val_acc, val_top5, lr,
                                     images_per_s, train_loss, train_acc, epoch_time_s)
  text: model, config                the torchinfo summary and the resolved config (a new run only)
  hparams                            when the run ends: its swept values and key settings, with
                                     hparams/best_val_acc and hparams/final_val_acc, for the HParams tab

The x axis is the global optimizer step. A resumed run appends to the same folder with
``purge_step`` = its checkpoint's step + 1: TensorBoard then drops whatever the stopped run wrote after
that checkpoint (it is trained again), so no step appears twice. Only rank 0 writes; without the
``tensorboard`` package a run warns once and writes no event files.

    tensorboard --logdir runs/
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from core.log import get_logger

LEGACY_FOLDER = "tb"  # where runs wrote their event files before they went into the run directory
_warned = False
log = get_logger(__name__)


class Board:
    """A run's event writer, or (``writer=None``: off, not installed, not rank 0) one that writes nothing."""

    def __init__(self, writer=None):
        self.writer = writer

    def train_step(self, step: int, loss: float, acc: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/acc", acc, step)
            self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, row: dict[str, Any], step: int) -> None:
        """One metrics.jsonl row, flushed so that a run killed later keeps it."""
        if self.writer is None:
            return
        for key in EPOCH_FIELDS:
            if key in row:
                self.writer.add_scalar(f"epoch/{key}", row[key], step)
        self.writer.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            # Markdown: four spaces keep a table's columns (a code block).
            self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """One session for the HParams tab. Only its start and end are written, not an experiment summary:
        TensorBoard then builds the table's columns from every run's hparams (the union over a sweep, whose
        points may set different keys) and offers every scalar tag as a metric."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as summaries

        _, start, end = summaries({k: _hparam_value(v) for k, v in hparams.items()}, metrics)
        self.writer.file_writer.add_summary(start, step)
        self.writer.file_writer.add_summary(end, step)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


EPOCH_FIELDS = ("val_loss", "val_acc", "val_top5", "lr", "images_per_s", "train_loss", "train_acc", "epoch_time_s",
                "val_loss_ema", "val_acc_ema")


def open_board(enabled: bool, run_path: Path, purge_step: Optional[int] = None) -> Board:
    """The writer of ``run_path``'s event files (``purge_step``: where a resumed run continues), or a Board that
    writes nothing."""
    global _warned
    if not enabled:
        return Board()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if not _warned:
            _warned = True
            log.warning(f"warning: no TensorBoard event files ({e}); pip install tensorboard, or set "
                        f"output.tensorboard: false")
        return Board()
    # flush_secs: a run killed without a word loses at most this much of its step scalars (each epoch's
    # row is flushed at once); the event file format stays readable up to the last whole record.
    folder = Path(run_path) / LEGACY_FOLDER if (Path(run_path) / LEGACY_FOLDER).is_dir() else Path(run_path)
    return Board(SummaryWriter(log_dir=str(folder), purge_step=purge_step, flush_secs=30))


def hparams_of(cfg, results: dict[str, Any]) -> dict[str, Any]:
    """The values the HParams tab compares: key settings, then the sweep's values (results.json ``swept``)."""
    t = cfg.train
    return {"model": cfg.model.name, "dataset": cfg.data.name, "seed": cfg.seed, "train.lr": t.lr,
            "train.batch_size": t.batch_size, "train.epochs": t.epochs, "train.optimizer": t.optimizer,
            "train.weight_decay": t.weight_decay, "train.schedule": t.schedule,
            **(results.get("swept") or {})}


def _hparam_value(v: Any) -> Any:
    """What the hparams summary takes (a number or a string): anything else as its JSON text (torch's
    summary would record a bool as 1.0 and drop a None)."""
    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
        return v
    return json.dumps(v, default=str)

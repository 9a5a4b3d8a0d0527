"""One experiment: build everything from a Config, train epoch by epoch, and record it in a ``RunDir``.

``fit`` also continues a run from its ``last.pt`` (``resume=``), bit for bit: see train/checkpoint.py
for what the checkpoint holds. Stop signals (Ctrl-C, SIGTERM, SIGHUP) end the current step, write a
resumable checkpoint and raise ``Interrupted`` (core/signals.py).
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from config import Config, dump_config
from core.errors import Interrupted, RunFailed, UserError, one_line
from core.log import SUMMARY, get_logger, only_rank0
from core.signals import GracefulStop
from core.status import PRUNED
from core.text import eta, format_duration
from data import get_spec, load_data
from data.locate import locate
from models import build_model
from models.measure import describe, flops_per_image
from train import checkpoint, threads
from train.distributed import Dist, PeerLost, launcher
from train.ending import ending_of
from train.engine import EpochMeter, NonFiniteLoss, evaluate, train_one_epoch
from train.provenance import now, provenance
from train.rundir import RunDir, config_text
from train.setup import Setup, global_batch, prepare, resolve_device, scaled_lr, seed_everything
from train.stopping import Stopper, stop_reason
from train.tb import Board, hparams_of, open_board

log = get_logger(__name__)


def format_epoch(m: dict[str, Any], epochs: int, eta_s: Optional[float] = None) -> str:
    """One epoch's console line; ``eta_s``: the time the run's remaining epochs should take."""
    more = f" top-5 {m['val_top5']:.2f}%" if "val_top5" in m else ""
    more += f" (EMA {m['val_acc_ema']:.2f}%)" if "val_acc_ema" in m else ""
    eta = f"  ETA {format_duration(eta_s)}" if eta_s is not None else ""
    return (f"epoch {m['epoch']:>{len(str(epochs))}}/{epochs}  train loss {m['train_loss']:.4f} "
            f"acc {m['train_acc']:.2f}%  val loss {m['val_loss']:.4f} acc {m['val_acc']:.2f}%{more}  "
            f"lr {m['lr']:.2e}  {m['epoch_time_s']:.1f}s  {m['images_per_s']:.0f} img/s{eta}")


def resume_command(run_dir: RunDir, dist: Dist = Dist()) -> str:
    return f"{launcher(dist)} --resume {shlex.quote(str(run_dir.path))}"


def fit(cfg: Config, run_dir: RunDir, *, progress: Optional[bool] = None, resume: Optional[dict[str, Any]] = None,
        command: Optional[str] = None, dist: Dist = Dist(), stopper: Optional[Stopper] = None) -> dict[str, Any]:
    """Train ``cfg`` end to end into ``run_dir`` (from ``resume``, a loaded last.pt, if given); returns
    results.json's content.

    Bad input (unknown model, missing dataset, ...) raises ``UserError`` before the directory exists.
    Once it exists, every way out records its own status in results.json (train/ending.py): ``completed``,
    ``stopped_early`` (train.early_stopping_patience, train/stopping.py; returns like ``completed``), ``pruned``
    (``stopper``, asked after every epoch but the last with the run's history so far, returned a reason: a
    search's pruner, launch/tune.py; returns like ``completed``),
    ``diverged`` (``NonFiniteLoss`` is re-raised), ``interrupted`` (``Interrupted`` / ``KeyboardInterrupt``,
    re-raised, with a resumable checkpoint when the stop was graceful) or ``failed`` with the error (re-raised;
    an error that is not the user's becomes ``RunFailed`` with the first line, the traceback in results.json).

    With several processes (``dist``, train/distributed.py) every one calls ``fit``; only rank 0 writes
    ``run_dir`` (TensorBoard's event files included, train/tb.py) and logs.
    """
    progress = (sys.stderr.isatty() if progress is None else progress) and dist.is_main
    if not dist.is_main:
        run_dir.follow()
    before = torch.get_num_threads()
    try:
        return _fit(cfg, run_dir, progress, resume, command, dist, stopper)
    finally:
        run_dir.release()  # the directory's lock (held since it was made, or opened for --resume)
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)  # this process's next run (a multi-run call) starts as it would have


def _fit(cfg: Config, run_dir: RunDir, progress: bool, resume: Optional[dict[str, Any]], command: Optional[str],
         dist: Dist, stopper: Optional[Stopper] = None) -> dict[str, Any]:
    with only_rank0(dist.is_main), GracefulStop(announce=lambda text: log.info(text.strip())) as stop:
        threads.apply(cfg.train.threads, resume)  # before the model is built; a resume: the run's recorded count
        seed_everything(cfg.seed)  # the one place a run is seeded: initial weights, dropout, MixUp/CutMix
        s, info, flops, data = _build(cfg, dist, counted=resume is None)
        loop = _Loop(cfg, s, run_dir, stop, progress, stopper)
        loop.data = data.fingerprint()
        if resume is not None:
            checkpoint.check_data(resume, loop.data, str(run_dir.path))
            checkpoint.restore(s, resume, cfg)
            loop.load(resume)
        path = _open(run_dir, dist)
        # A resumed run continues the event files from its checkpoint's step (later ones are dropped).
        purge = (loop.global_step + 1 if resume is not None else 0) if run_dir.resuming else None
        loop.tb = open_board(cfg.output.tensorboard and run_dir.writes, path, purge) if path else Board()
        try:
            _start_attempt(cfg, run_dir, loop, info, flops, command, resumed=resume is not None)
            t = cfg.train
            parts = [f"{t.batch_size}"] + ([f"{t.accumulate_steps} accumulated"] if t.accumulate_steps > 1 else []) \
                + ([f"{dist.world_size} processes"] if dist.enabled else [])
            batch = f", global batch {global_batch(t, dist.world_size)} ({' x '.join(parts)})" if len(parts) > 1 else ""
            log.info(f"run dir: {path}\ndevice: {s.describe()}, {torch.get_num_threads()} CPU thread(s) "
                     f"(train.threads: {cfg.train.threads}), {len(data.train[1])} train / {len(data.val[1])} "
                     f"val images, {len(s.train_loader)} steps/epoch{batch}")
            if t.lr_scaling != "none":
                log.info(f"lr: {scaled_lr(t, dist.world_size):.6g} (train.lr {t.lr:g} x {t.lr_scaling} of global "
                         f"batch {global_batch(t, dist.world_size)} / train.lr_reference_batch {t.lr_reference_batch})")
            loop.run()
            with stop.holding():
                summary = _summary(cfg, loop.history)
                loop.tb.hparams(hparams_of(cfg, run_dir.results), {"hparams/best_val_acc": summary["best_val_acc"],
                                "hparams/final_val_acc": summary["final_val_acc"]}, loop.global_step)
                stopped = {"stopped_epoch": loop.epoch, "stop_reason": loop.stopped} if loop.stopped else {}
                return _end(run_dir, loop.stop_status if loop.stopped else "completed",
                            **{**loop.progress(), "resume_command": None, **summary, **stopped})
        except BaseException as e:
            with stop.holding():
                _record_end(e, cfg, run_dir, loop, dist)
            if isinstance(e, (KeyboardInterrupt, NonFiniteLoss, UserError, RunFailed)):
                raise
            if dist.is_peer_loss(e):
                raise dist.peer_lost(e) from e
            raise RunFailed(f"run failed: {run_dir.results.get('error')} (details in "
                            f"{run_dir.file('results.json')})") from e
        finally:
            loop.tb.close()


def _build(cfg: Config, dist: Dist, counted: bool):
    """The run's setup (model, data, optimizer, ... on its device), its description and FLOPs, its data."""
    device = resolve_device(cfg.train.device, dist)
    if device.type == "cpu":
        threads.warn_if_busy(torch.get_num_threads())
    spec = get_spec(cfg.data.name)
    model = build_model(cfg, spec)  # the same initial weights in every process
    if dist.rank:
        torch.manual_seed(cfg.seed + 1_000_003 * dist.rank)  # its own dropout and MixUp/CutMix draws
    info = describe(model, spec)
    flops = _count_flops(cfg, model, spec) if counted else None
    _files, found_in, _looked = locate(spec, Path(cfg.data.root).expanduser())  # where load_data will read it
    log.info(f"loading {cfg.data.name} from {found_in or cfg.data.root}")
    data = load_data(cfg.data)
    if not dist.enabled:  # several processes: each copies its part to its device (make_loaders)
        data = data.to(device)
    return prepare(cfg, model, data, device, dist), info, flops, data


def _open(run_dir: RunDir, dist: Dist):
    """Make (or reopen) the run directory: rank 0 makes it, and a problem with it stops every process alike."""
    if not dist.enabled:
        return run_dir.create()
    try:
        made, problem = run_dir.create(), None
    except UserError as e:
        made, problem = None, str(e)
    made, problem = dist.broadcast((made, problem))
    if problem:
        raise UserError(problem)
    run_dir.adopt(made)
    return made


def _start_attempt(cfg: Config, run_dir: RunDir, loop: "_Loop", info, flops, command: Optional[str],
                   resumed: bool) -> None:
    """results.json says ``running`` with this attempt (an earlier one that never ended: ``killed``), the
    config and the metrics the checkpoint knows are written, and a new run writes its summary."""
    s = loop.s
    attempts = list(run_dir.results.get("attempts", []))
    for a in attempts:
        if a.get("status") in (None, "running"):
            a["status"] = "killed"  # it ended without a word: SIGKILL, out of memory, a power cut
    attempts.append({"started": now(), "from": loop.position(), "command": command})
    for key in ("stopped_epoch", "stop_reason"):  # a run that stopped early and goes on (a longer patience)
        run_dir.results.pop(key, None)
    if not resumed:
        run_dir.results.update(model=cfg.model.name, dataset=cfg.data.name, params=info.params,
                               mult_adds=info.mult_adds, epochs=cfg.train.epochs,
                               **({"flops_inference": flops.inference, "flops_training": flops.training}
                                  if flops else {}))
    run_dir.update("running", device=str(s.device), precision=str(s.precision), epochs=cfg.train.epochs,
                   processes=s.dist.world_size, global_batch=global_batch(cfg.train, s.dist.world_size),
                   accumulate_steps=cfg.train.accumulate_steps, lr_used=scaled_lr(cfg.train, s.dist.world_size),
                   **provenance(s.device, command), started=run_dir.results.get("started") or now(),
                   ended=None, error=None, traceback=None, attempts=attempts, **loop.progress())
    run_dir.write("config.yaml", config_text(dump_config(cfg), run_dir.results.get("run_id")))
    run_dir.rewrite_metrics(loop.history)  # the log as the checkpoint knows it: lines written after it go
    if run_dir.resuming:
        log.info(f"resuming {run_dir.path} {loop.position()}")
    if not resumed:
        run_dir.write("summary.txt", info.summary + "\n")
        loop.tb.text("model", info.summary)
        loop.tb.text("config", dump_config(cfg))
        log.log(SUMMARY, info.summary)


def _record_end(e: BaseException, cfg: Config, run_dir: RunDir, loop: "_Loop", dist: Dist) -> None:
    """results.json says how the attempt ended (``ending_of``) and how to go on from there."""
    if dist.is_peer_loss(e):  # a collective inside torch (DDP's gradient all-reduce) lost a process
        e = dist.peer_lost(e)
    ending = ending_of(e)
    if ending.status == "interrupted":
        signame = e.signame if isinstance(e, Interrupted) else "SIGINT"
        saved = loop.saved_at if cfg.output.checkpoints else None
        how = ("resume with: " + resume_command(run_dir, dist) + f" (continues {saved})") if saved else \
            "no checkpoint to resume from (output.checkpoints is off or none was written yet)"
        _end(run_dir, "interrupted", error=f"stopped by {signame} {loop.position()}; {how}",
             resume_command=resume_command(run_dir, dist) if saved else None, **loop.progress(saved=True))
        log.info(f"interrupted by {signame} {loop.position()}; {how}")
        return
    if ending.status == "diverged":
        _end(run_dir, "diverged", error=ending.error, **loop.progress())
        return
    # Another process of the run died: this one's checkpoint is good, the run can go on from it.
    resumable = isinstance(e, PeerLost) and loop.saved_at is not None
    _end(run_dir, "failed", error=ending.error, traceback=ending.traceback,
         **({"resume_command": resume_command(run_dir, dist)} if resumable else {}), **loop.progress(saved=True))
    if resumable:
        log.info(f"resume with: {resume_command(run_dir, dist)} (continues {loop.saved_at})")


# FLOPs per image by (model section, dataset): a process that trains several runs of one architecture (a sweep
# over seeds or learning rates) counts it once. The count runs the model under torch's FlopCounterMode, ~25 ms
# for a tiny ViT and seconds for ResNet-18 at 160 px on 2 CPU cores.
_FLOPS: dict[tuple[str, str], Any] = {}


def _count_flops(cfg: Config, model, spec):
    """``flops_per_image`` (a CPU copy, in a forked RNG), or None with a warning: a count the counter cannot
    make (an op it does not know how to run on the CPU) must not stop the run it only describes."""
    try:
        key = (json.dumps(cfg.model.to_dict(), sort_keys=True, default=str), cfg.data.name)  # all it depends on
        if key not in _FLOPS:
            _FLOPS[key] = flops_per_image(model, spec)
        return _FLOPS[key]
    except Exception as e:  # noqa: BLE001 - any failure of a by-product
        log.info(f"warning: FLOPs not counted ({one_line(e)})")
        return None


def _end(run_dir: RunDir, status: str, **fields: Any) -> dict[str, Any]:
    """Record how the run ended; if even that cannot be written (a full disk), say so on stderr."""
    attempts = list(run_dir.results.get("attempts", []))
    if attempts:
        attempts[-1] = {**attempts[-1], "ended": now(), "status": status}
    try:
        return run_dir.update(status, ended=now(), attempts=attempts, **fields)
    except RunFailed as e:
        log.warning(f"warning: could not record status {status!r}: {e}")
        return run_dir.results


def _summary(cfg: Config, history: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json's numbers from the per-epoch metrics."""
    best = max(history, key=lambda r: r["val_acc"])  # the first epoch with the best accuracy
    last = history[-1]
    return dict(
        best_val_acc=best["val_acc"], best_epoch=best["epoch"],
        final_val_acc=last["val_acc"], final_val_loss=last["val_loss"],
        **({"final_val_top5": last["val_top5"]} if cfg.train.top5 else {}),
        **(_ema_summary(history) if cfg.train.ema_decay else {}),
        final_train_loss=last["train_loss"],
        train_time_s=sum(r["train_time_s"] for r in history),
        images_per_s=statistics.median(r["images_per_s"] for r in history),
    )


def _ema_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(history, key=lambda r: r["val_acc_ema"])
    return dict(best_val_acc_ema=best["val_acc_ema"], best_epoch_ema=best["epoch"],
                final_val_acc_ema=history[-1]["val_acc_ema"], final_val_loss_ema=history[-1]["val_loss_ema"])


class _Loop:
    """The epoch loop with its position (``epoch`` finished epochs, ``step`` steps into the next), so that
    it can checkpoint and stop anywhere and continue from there."""

    def __init__(self, cfg: Config, s: Setup, run_dir: RunDir, stop: GracefulStop, progress: bool,
                 stopper: Optional[Stopper] = None):
        self.cfg, self.s, self.run_dir, self.stop, self.bar = cfg, s, run_dir, stop, progress
        self.stopper = stopper
        self.epoch = 0  # finished epochs
        self.step = 0  # optimizer steps into epoch + 1
        self.global_step = 0
        self.meter = EpochMeter(s.device)
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch = -1.0, 0
        self.best_acc_ema, self.best_epoch_ema = -1.0, 0  # the weight EMA's (train.ema_decay)
        self.patience_from = 0  # early stopping counts epochs without improvement from here (train/stopping.py)
        self.stopped: Optional[str] = None  # why the run stopped early, once it has
        self.stop_status = "stopped_early"  # or pruned: who stopped it (``stopper``)
        self.saved_at: Optional[str] = None  # the position of the last checkpoint written, in words
        self.last_save = time.monotonic()
        self.tb = Board()  # TensorBoard's writer, opened once the run directory exists
        self.data: Optional[dict[str, Any]] = None  # the data's fingerprint, recorded in every checkpoint

    def load(self, ckpt: dict[str, Any]) -> None:
        ckpt = checkpoint.own_state(ckpt, self.s.dist)
        self.epoch, self.step, self.global_step = ckpt["epoch"], ckpt["step"], ckpt["global_step"]
        self.history = list(ckpt["history"])
        self.best_acc, self.best_epoch = ckpt["best_acc"], ckpt["best_epoch"]
        self.best_acc_ema, self.best_epoch_ema = ckpt.get("best_acc_ema", -1.0), ckpt.get("best_epoch_ema", 0)
        self.patience_from = ckpt.get("patience_from", 0)
        if self.cfg.train.epochs > ckpt["config"]["train"]["epochs"] and \
                stop_reason(self.history, self.cfg.train, self.patience_from):
            # Extended after it stopped early: it gets its patience again, counted from here.
            self.patience_from = self.epoch
        if ckpt["meter"] is not None:
            self.meter.load_state_dict(ckpt["meter"])
        self.saved_at = self.position()

    def position(self) -> str:
        return checkpoint.describe_position(self.epoch, self.step, len(self.s.train_loader)) \
            if self.epoch or self.step else "before epoch 1"

    def progress(self, saved: bool = False) -> dict[str, Any]:
        """results.json's progress fields; ``saved``: also where the last checkpoint stands (what a resume
        continues from), which after a stop or crash may be behind the step the run reached."""
        out = {"epochs_done": self.epoch, "step": self.step, "updated": now(),
               **({"best_val_acc": self.best_acc, "best_epoch": self.best_epoch} if self.history else {})}
        if saved:
            out["checkpoint"] = self.saved_at
        return out

    def save(self) -> None:
        if not self.cfg.output.checkpoints:
            return
        state = checkpoint.capture(  # several processes: all gather, rank 0 writes
            self.s, self.cfg, epoch=self.epoch, step=self.step, global_step=self.global_step, meter=self.meter,
            history=self.history, best_acc=self.best_acc, best_epoch=self.best_epoch, run=self.run_dir.results,
            data=self.data, best_acc_ema=self.best_acc_ema, best_epoch_ema=self.best_epoch_ema,
            patience_from=self.patience_from)
        if state is not None:
            self.run_dir.save_state(state)
        self.saved_at = self.position()
        self.last_save = time.monotonic()

    def _stop_reason(self) -> Optional[str]:
        reason = stop_reason(self.history, self.cfg.train, self.patience_from)
        if reason:
            self.stop_status = "stopped_early"
        elif self.stopper is not None and self.history and self.epoch < self.cfg.train.epochs:
            reason = self.stopper(self.history)  # after a resume too: a stop it decided is decided again
            self.stop_status = PRUNED
        return reason

    def _stop_requested(self) -> bool:
        """Whether to stop now; with several processes, whether any of them got a stop signal."""
        return self.s.dist.any([self.stop.requested], self.s.device)[0]

    def _stop_now(self) -> None:
        """A stop was asked for: checkpoint where we are, then stop."""
        self.save()
        raise Interrupted(self.stop.signum or signal.SIGTERM)  # a process the signal did not reach: as SIGTERM

    def _after_step(self, step: int) -> None:
        self.step = step
        self.global_step += 1
        out = self.cfg.output
        stop = self.stop.requested
        timed = bool(out.checkpoint_every_minutes) and \
            time.monotonic() - self.last_save >= 60 * out.checkpoint_every_minutes
        if self.s.dist.enabled:  # decided together, every log_every steps (each agreement is a host sync)
            stop, timed = self.s.dist.any([stop, timed], self.s.device) if step % self.cfg.train.log_every == 0 \
                else (False, False)
        if stop:
            self._stop_now()
        if step < len(self.s.train_loader) and (
                (out.checkpoint_every_steps and self.global_step % out.checkpoint_every_steps == 0) or timed):
            self.save()

    def _log_step(self, step: int, readout: dict[str, float]) -> None:
        # Called before _after_step counts this step.
        self.tb.train_step(self.global_step + 1, readout["loss"], readout["acc"], readout["lr"])

    def run(self) -> None:
        cfg, s = self.cfg, self.s
        total = cfg.train.epochs
        if self._stop_requested():
            self._stop_now()
        while self.epoch < total:
            # At an epoch's end (or a resume's start there, when a shorter patience now applies).
            self.stopped = self._stop_reason() if self.step == 0 else None
            if self.stopped:
                log.info(f"{'pruned' if self.stop_status == PRUNED else 'stopping early'} after epoch {self.epoch}: "
                         f"{self.stopped}")
                return
            n = self.epoch + 1
            finished = self.step == len(s.train_loader)  # stopped between the epoch's training and its eval
            try:
                tr = train_one_epoch(s, () if finished else None, log_every=cfg.train.log_every,
                                     progress=self.bar, desc=f"epoch {n}/{total}", meter=self.meter,
                                     on_step=self._after_step, on_log=self._log_step)
            except NonFiniteLoss as e:
                raise NonFiniteLoss(f"epoch {n}: {e}") from None
            self.step = len(s.train_loader)
            s.dist.share_buffers(s.module)
            # Several processes check for a stop after the evaluation (together), not within it.
            ev = evaluate(s, top5=cfg.train.top5, progress=self.bar,
                          on_batch=None if s.dist.enabled else lambda: self.stop.requested and self._stop_now())
            if not all(map(_finite, (ev["val_loss"], ev["val_acc"]))):
                raise NonFiniteLoss(f"epoch {n}: validation loss became {ev['val_loss']}; "
                                    f"try a lower train.lr, train.grad_clip, or train.warmup_epochs")
            ema = self._evaluate_ema() if s.ema is not None else {}
            row = {"epoch": n, "train_loss": tr["train_loss"], "train_acc": tr["train_acc"],
                   "val_loss": ev["val_loss"], "val_acc": ev["val_acc"], "lr": tr["lr"],
                   "epoch_time_s": tr["train_time_s"] + ev["eval_time_s"], "train_time_s": tr["train_time_s"],
                   "images_per_s": tr["images_per_s"], **({"val_top5": ev["val_top5"]} if "val_top5" in ev else {}),
                   "train_images": tr["train_images"], "val_images": ev["val_images"], **ema}
            improved = row["val_acc"] > self.best_acc
            improved_ema = bool(ema) and row["val_acc_ema"] > self.best_acc_ema
            self.history.append(row)
            if improved:
                self.best_acc, self.best_epoch = row["val_acc"], n
            if improved_ema:
                self.best_acc_ema, self.best_epoch_ema = row["val_acc_ema"], n
            self.epoch, self.step, self.meter = n, 0, EpochMeter(s.device)
            # Before the checkpoint: a kill between the two redoes the epoch, and the resumed run's
            # purge_step drops this row from TensorBoard; after it, the row stays and is not written again.
            self.tb.epoch(row, self.global_step)
            # The checkpoint first: a kill after it and before the log line loses nothing (the log is
            # rebuilt from the checkpoint's history); a kill before it redoes this epoch.
            if cfg.output.checkpoints and improved:
                self.run_dir.save_weights("best.pt", s.module)
            if cfg.output.checkpoints and improved_ema:
                self.run_dir.save_weights("best_ema.pt", s.ema.module)
            self.save()
            self.run_dir.log_epoch(row)
            self.run_dir.update("running", **self.progress())
            log.info(format_epoch(row, total, eta([r["epoch_time_s"] for r in self.history], total - n)))
            if self._stop_requested():
                raise Interrupted(self.stop.signum or signal.SIGTERM)

    def _evaluate_ema(self) -> dict[str, float]:
        """The weight EMA's validation loss and accuracy (with several processes: rank 0's buffers in all)."""
        s = self.s
        s.dist.share_buffers(s.ema.module)
        ev = evaluate(dataclasses.replace(s, eval_model=s.ema_eval_model), progress=self.bar,
                      on_batch=None if s.dist.enabled else lambda: self.stop.requested and self._stop_now())
        return {"val_loss_ema": ev["val_loss"], "val_acc_ema": ev["val_acc"]}


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")

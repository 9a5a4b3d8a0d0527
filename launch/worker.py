"""One sweep point, run by whatever launched it: ``run_point(spec) -> outcome``, both plain dicts (JSON- and
pickle-safe), so the local ``--jobs N`` launcher (launch/local.py) and a cluster launcher (launch/slurm.py, submitit)
run the same code. ``job_spec`` makes a spec from a ``launch.plan.Job``; ``Outcome.from_dict`` reads the outcome.

    python -m launch.worker [--parent PID] < spec.json

runs one spec in its own process, as the local launcher does: events and then the outcome go to stdout as
JSON lines (the launcher reads them), and everything the point would have printed goes to ``train.log`` in
its run directory.

A spec:

    index, name, values, experiment, source   the point (config.sweep.Point) and its place in the call
    config      its resolved config (``Config.to_dict()``); relative paths are taken from ``cwd``
    cwd         where the call started
    run_dir     continue this run directory from its last.pt (its own config.yaml then decides), or null:
                a new run directory under the config's output.dir
    threads     this worker's share of the cores (null: torch's default): what train.threads: auto means here
    command     the command recorded in results.json

An outcome: ``name``, ``status`` (completed / failed / diverged / interrupted), ``run_dir`` (null when the
point stopped before it had one), ``results`` (results.json), ``error`` (one line), ``traceback`` and
``exit_code`` (an interrupted point: 128 + the signal). Events: ``{"event": "run_dir", "path", "log",
"epochs_done", "epochs"}`` once the run directory exists, ``{"event": "epoch", "epochs", **metrics row}``
after each epoch, and in ``python -m launch.worker`` a last ``{"event": "outcome", "outcome": {...}}``.

Only torch-free modules are imported at the top: the process sets up its signal handling and parent-death
signal before the seconds torch takes to import.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from core.files import strict_json
from core.log import get_logger, to_file
from core.signals import GracefulStop
from core.status import FINISHED

LOG_FILE = "train.log"
log = get_logger(__name__)

Event = Callable[[dict[str, Any]], None]


def job_spec(job, *, command: Optional[str] = None, threads: Optional[int] = None,
             cwd: Optional[str] = None) -> dict[str, Any]:
    """The spec of a ``launch.plan.Job``: a point to start afresh, or one to continue in its run directory."""
    p = job.point
    return {"index": job.index, "name": p.name, "values": p.values, "experiment": p.experiment, "source": p.source,
            "config": job.cfg.to_dict(), "cwd": cwd or os.getcwd(),
            "run_dir": str(job.run_dir.path) if job.run_dir.resuming else None, "threads": threads,
            "command": command, **({"extra": p.extra} if p.extra else {})}


def run_point(spec: dict[str, Any], events: Optional[Event] = None, dist=None) -> dict[str, Any]:
    """Train one point described by ``spec`` (module docstring) and return its outcome as a plain dict.

    Every way the point can end is an outcome, a stop signal included: SIGTERM, SIGINT or SIGHUP before its
    training starts ends it as ``interrupted`` at once; during training, fit checkpoints and stops. ``events``
    is called with each event (run directory made, epoch done); it must not raise. ``dist``: this process's
    place among several training the point together (a SLURM job with several tasks, launch/slurm.py),
    already joined; only rank 0 sends events and writes the log.
    """
    from launch.plan import outcome_dict
    from train.distributed import Dist
    from train.ending import ending_of

    dist = dist or Dist()
    send = events if events is not None and dist.is_main else (lambda event: None)
    with to_file(LOG_FILE) as train_log, GracefulStop(announce=lambda text: log.info(text.strip())) as stop:
        progress = _Progress(spec, send, train_log)
        try:
            job = progress.job = _job(spec, on_create=[progress.created] if dist.is_main else [],
                                      on_epoch=[progress.epoch], follower=not dist.is_main)
            if job.run_dir.resuming and dist.is_main:  # its directory exists already: its log starts now
                progress.created(job.run_dir.path)
        except (KeyboardInterrupt, Exception) as e:  # noqa: BLE001 - a second signal while it was being set
            # up, a run directory that cannot be resumed, a bug: this point's outcome, like any error of a run
            ending = ending_of(e)
            if ending.status == "interrupted":
                return not_started(spec, getattr(e, "signum", signal.SIGINT))
            return outcome_dict(spec.get("name"), ending, spec.get("run_dir"))
        dist.barrier()  # every process has read a resumed run's state before rank 0 writes it again
        if dist.any([stop.requested], _cpu())[0]:  # together: no task trains alone
            return not_started(spec, stop.signum or signal.SIGTERM)

        from launch.run import run_one

        outcome = run_one(job, command=spec.get("command"), progress=False, dist=dist)
        with stop.holding():
            return outcome.to_dict()


class _Progress:
    """What a point tells its launcher, as its run directory's listeners: where it runs and logs (once the
    directory exists; its train.log starts there), then each finished epoch's row."""

    def __init__(self, spec: dict[str, Any], send: Event, train_log: to_file):
        self.spec, self.send, self.train_log = spec, send, train_log
        self.job = None  # the launch.plan.Job, once made

    def created(self, path: Path) -> None:
        header = (f"=== {self.job.describe()}: pid {os.getpid()} on {socket.gethostname()}\n"
                  f"{self.spec.get('command') or ''}")
        self.send({"event": "run_dir", "path": str(path), "log": str(self.train_log.open(path, header=header)),
                   "epochs_done": self.job.ckpt["epoch"] if self.job.ckpt else 0, "epochs": self.job.cfg.train.epochs})

    def epoch(self, row: dict[str, Any]) -> None:
        self.send({"event": "epoch", "epochs": self.job.cfg.train.epochs, **row})


def _cpu():
    import torch

    return torch.device("cpu")


def not_started(spec: dict[str, Any], signum: int) -> dict[str, Any]:
    from launch.plan import outcome_dict
    from train.ending import Ending

    return outcome_dict(spec.get("name"), Ending("interrupted", f"stopped by {signal.Signals(signum).name} before "
                                                 f"it started", exit_code=128 + signum), spec.get("run_dir"))


def _job(spec: dict[str, Any], *, on_create=(), on_epoch=(), follower: bool = False):
    """The ``launch.plan.Job`` a spec describes (imports torch), its run directory calling ``on_create`` with
    its path once a new one exists and ``on_epoch`` with each epoch's row; a resumed run's lock is held from
    now on, except by a ``follower`` (a process other than rank 0 of several)."""
    import torch

    from config import from_dict
    from config.sweep import Point
    from launch.plan import Job, point_run_dir
    from train.resume import anchor_paths, open_for_resume

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))  # train.threads: auto in this worker (train/threads.py)
    raw = spec["config"]
    if spec.get("cwd") and Path(spec["cwd"]).resolve() != Path.cwd().resolve():
        raw = anchor_paths(raw, spec["cwd"])  # started elsewhere (a cluster node): the call's relative paths
    cfg = from_dict(raw)
    index = spec.get("index", 0)
    point = Point(spec["name"], dict(spec.get("values") or {}), cfg, spec.get("source", ""),
                  spec.get("experiment", ""), extra=dict(spec.get("extra") or {}))
    if spec.get("run_dir"):
        r = open_for_resume(spec["run_dir"], on_epoch=on_epoch, follower=follower)
        return Job(index, point, r.run_dir, r.cfg, r.ckpt)
    return Job(index, point, point_run_dir(point, index, on_create=on_create, on_epoch=on_epoch), cfg)


# ----------------------------------------------------------------------------- python -m launch.worker


class EventPipe:
    """This process's stdout, kept for events alone (one JSON line each): file descriptor 1 is pointed at
    stderr, so a stray print cannot corrupt the stream."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self.fd = os.dup(1)
        os.dup2(2, 1)
        self.open = True

    def send(self, event: dict[str, Any]) -> None:
        if not self.open:
            return
        data = (strict_json(event) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:  # the launcher is gone (a broken pipe): the point still ends properly
            self.open = False


def output_to(path: str) -> None:
    """From now on, this process's stdout and stderr (warnings, a crash's traceback) go to ``path`` too."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel send this process SIGTERM when its launcher dies, SIGKILL included, so the point
    checkpoints and stops (fit's GracefulStop) instead of training on orphaned; ``--resume COMPARE_DIR``
    continues it. The signal comes when the launcher's thread that started this process ends, so launchers
    start workers from their main thread."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the launcher died before the line above: nobody will send it
        os.kill(os.getpid(), signal.SIGTERM)


def exit_code(outcome: dict[str, Any]) -> int:
    if outcome["status"] in FINISHED:
        return 0
    if outcome["status"] == "interrupted":
        return outcome.get("exit_code") or 130
    return 1


def main(argv: Optional[list[str]] = None) -> int:
    import faulthandler

    faulthandler.enable()  # a hard crash leaves its stack in train.log (stderr, see output_to)
    # A stop signal before run_point installs its own handling ends the point as not started.
    with GracefulStop(announce=lambda text: None) as early:
        p = argparse.ArgumentParser(prog="python -m launch.worker", description=__doc__.split("\n\n")[0])
        p.add_argument("--parent", type=int, help="the launcher's pid: stop (SIGTERM) when it dies")
        args = p.parse_args(argv)
        if args.parent is not None:
            die_with_parent(args.parent)
        pipe = EventPipe()

        def report(event: dict[str, Any]) -> None:
            if event["event"] == "run_dir":
                output_to(event["log"])
            pipe.send(event)

        spec = json.loads(sys.stdin.read())
        outcome = not_started(spec, early.signum) if early.requested else run_point(spec, report)
        with early.holding():
            pipe.send({"event": "outcome", "outcome": outcome})
    return exit_code(outcome)


if __name__ == "__main__":
    sys.exit(main())

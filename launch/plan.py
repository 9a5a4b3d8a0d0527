"""Running the points of a multi-run call (``config.sweep`` expands them) one after another, or with
``--jobs N`` up to N at once in worker processes (train/parallel.py, train/worker.py).

A failed, diverged or interrupted point is recorded and the rest go on (Ctrl-C stops the sweep).
Each point's run directory records its swept values and experiment name in results.json, so the
comparison (``plots``) groups repeats over seeds without parsing run names.
"""
from __future__ import annotations

import json
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from config import Config, from_dict
from config.sweep import Point
from core.errors import Interrupted, RunFailed, UserError
from core.files import atomic_write, strict_json
from core.signals import GracefulStop
from data import get_spec
from models import DATASET_KEYS, MODELS
from train.engine import NonFiniteLoss
from train.fit import eta, fit, format_duration
from train.resume import anchor_paths, open_for_resume
from train.rundir import RunDir, is_live, read_results

if TYPE_CHECKING:
    from train.parallel import Workers

# ----------------------------------------------------------------------------- running


@dataclass
class Outcome:
    point: Point
    status: str  # completed | failed | diverged | interrupted
    run_dir: Optional[Path] = None  # None when the point failed before its run directory existed
    results: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  # one line
    traceback: Optional[str] = None  # for errors that are not the user's (a bug, out of memory, ...)
    exit_code: Optional[int] = None  # an interrupted point: the signal's exit code (130 Ctrl-C, 143 SIGTERM)
    skipped: bool = False  # finished before this call (a resumed sweep): not trained again

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and pickle-safe): what a worker process hands back (train/worker.py)."""
        return {"name": self.point.name, "status": self.status,
                "run_dir": str(self.run_dir) if self.run_dir is not None else None, "results": self.results,
                "error": self.error, "traceback": self.traceback, "exit_code": self.exit_code}

    @classmethod
    def from_dict(cls, point: Point, d: dict[str, Any]) -> "Outcome":
        return cls(point, d["status"], Path(d["run_dir"]) if d.get("run_dir") else None, d.get("results") or {},
                   error=d.get("error"), traceback=d.get("traceback"), exit_code=d.get("exit_code"))


def check_points(points: list[Point]) -> None:
    """What can be checked without building anything: model and dataset names, model keys.

    A mistake here would fail every point that has it, so it stops the whole call before any
    training. What only the builder can tell (a shape that does not fit) fails just its point.
    """
    for p in points:
        try:
            MODELS.check_kwargs(p.cfg.model.name, p.cfg.model.kwargs, "model", reserved=DATASET_KEYS)
            get_spec(p.cfg.data.name)
        except UserError as e:
            raise UserError(f"{p.source}{f' (sweep point {p.name})' if p.values else ''}: {e}") from None


class Manifest:
    """``sweep.json`` in a multi-run call's comparison directory: every point (its resolved config) and the
    run directory it trains in, written before the first point starts and after each one changes, so
    ``--resume COMPARE_DIR`` can finish the call after a crash, SIGKILL or preemption."""

    FILE = "sweep.json"

    def __init__(self, folder: Path, command: str, points: list[Point], run_dirs: list[Optional[str]],
                 cwd: Optional[str] = None, launcher: str = "local", slurm_jobs: Optional[list[Optional[str]]] = None):
        self.folder, self.command, self.points, self.run_dirs = folder, command, points, run_dirs
        self.cwd = cwd or os.getcwd()  # where the call started: its configs' relative paths start there
        self.launcher = launcher  # local (in this process, or --jobs N) or slurm (train/slurm.py)
        self.slurm_jobs = slurm_jobs or [None] * len(points)  # each point's latest SLURM job id

    @classmethod
    def start(cls, folder: Path, points: list[Point], command: str, launcher: str = "local") -> "Manifest":
        m = cls(folder, command, points, [None] * len(points), launcher=launcher)
        m.save()
        return m

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        path = folder / cls.FILE
        try:
            raw = json.loads(path.read_text())
            points = [Point(p["name"], p["values"], from_dict(anchor_paths(p["config"], raw["cwd"])), p["source"],
                            p["experiment"]) for p in raw["points"]]
            run_dirs = [p.get("run_dir") for p in raw["points"]]
            slurm_jobs = [p.get("slurm_job") for p in raw["points"]]
            command, cwd, launcher = raw["command"], raw["cwd"], raw.get("launcher", "local")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a readable sweep manifest ({type(e).__name__}: {e})") from None
        except UserError as e:
            raise UserError(f"{path}: a point's config is not valid here ({e})") from None
        return cls(folder, command, points, run_dirs, cwd, launcher, slurm_jobs)

    def set_run_dir(self, i: int, path: Path) -> None:
        self.run_dirs[i] = str(Path(path).resolve())  # absolute: a resume may start in another directory
        self.save()

    def set_slurm_job(self, i: int, job_id: str) -> None:
        self.slurm_jobs[i] = job_id
        self.save()

    def save(self) -> None:
        points = [{"name": p.name, "values": p.values, "experiment": p.experiment, "source": p.source,
                   "config": p.cfg.to_dict(), "run_dir": d, **({"slurm_job": j} if j else {})}
                  for p, d, j in zip(self.points, self.run_dirs, self.slurm_jobs)]
        try:
            atomic_write(self.folder / self.FILE, strict_json({"command": self.command, "cwd": self.cwd,
                                                               "launcher": self.launcher, "points": points}, indent=2))
        except OSError as e:
            raise RunFailed(f"cannot write {self.folder / self.FILE}: {e.strerror or e}") from None


@dataclass
class Job:
    """One point to run: fresh, or continued from its run directory's last.pt (``ckpt``)."""

    index: int
    point: Point
    run_dir: RunDir
    cfg: Config
    ckpt: Optional[dict[str, Any]] = None


def plan(manifest: Manifest, *, log=print, attached: frozenset[int] = frozenset()) -> tuple[list[Outcome], list[Job]]:
    """What a resumed call still has to do: completed and diverged points are kept as they are (a
    diverged run diverges again with the same seed), interrupted or killed ones continue from their
    last.pt, failed ones and those never started run from scratch. Points in ``attached`` (SLURM jobs
    still queued or running) are left to their jobs."""
    done, jobs = [], []
    for i, (point, folder) in enumerate(zip(manifest.points, manifest.run_dirs)):
        if i in attached:
            continue
        results = read_results(folder) if folder else None
        status = (results or {}).get("status")
        if status == "running" and is_live(results):
            raise UserError(f"--resume {manifest.folder}: point {point.name} is still running "
                            f"(pid {results.get('pid')}, {folder}); stop it first")
        started = folder is not None and (Path(folder) / "config.yaml").is_file()
        if status in ("completed", "diverged"):
            done.append(Outcome(point, status, Path(folder), results, error=results.get("error"), skipped=True))
        elif started and status != "failed":  # interrupted, or killed ("running" with its process gone)
            r = open_for_resume(folder)
            jobs.append(Job(i, point, r.run_dir, r.cfg, r.ckpt))
        else:  # failed, never started, or killed before it wrote its config: a new run directory
            jobs.append(Job(i, point, point_run_dir(point, i), point.cfg))
        if status == "failed":
            log(f"{point.name}: failed before ({results.get('error')}); running it again")
    return done, jobs


def point_run_dir(point: Point, index: int) -> RunDir:
    """A new run directory for ``point``, the ``index``-th of its call, under its ``output.dir`` (made when its
    run starts). results.json records the index, so a comparison lists runs in sweep order."""
    return RunDir(point.cfg.output.dir, point.cfg.run_name, extra={**point.record(), "point": index})


def jobs_for(points: list[Point]) -> list[Job]:
    return [Job(i, p, point_run_dir(p, i), p.cfg) for i, p in enumerate(points)]


def run_jobs(jobs: list[Job], total: int, *, manifest: Optional[Manifest] = None, log=print,
             command: Optional[str] = None, workers: Optional["Workers"] = None, quiet: bool = False) -> list[Outcome]:
    """Run each job in turn. A failed or diverged point is recorded and the rest go on; a stop signal
    ends the call after the current point has checkpointed (between points: before the next starts).

    ``workers`` (``train.parallel.Workers``, from ``--jobs N``): run up to N points at once instead, each
    in its own process (train/parallel.py); None runs them here, one after another, with ``k of n done, ETA``
    after each. ``quiet``: no model summary on the console (``fit``)."""
    if workers is not None:
        from train.parallel import run_parallel

        return run_parallel(jobs, total, workers, manifest=manifest, command=command)
    with GracefulStop(announce=lambda text: log(text.strip())) as stop:
        return _run_jobs(jobs, total, manifest, log, command, stop, quiet)


def _run_jobs(jobs, total, manifest, log, command, stop: GracefulStop, quiet: bool = False) -> list[Outcome]:
    outcomes, durations = [], []
    for n, job in enumerate(jobs, 1):
        point, run_dir = job.point, job.run_dir
        if stop.requested:
            log(f"stopped by {signal.Signals(stop.signum).name} before run {job.index + 1}/{total}; "
                f"{len(jobs) - n + 1} run(s) not started")
            outcomes.append(Outcome(point, "interrupted", None, error="not started: the call was stopped",
                                    exit_code=128 + stop.signum))
            break
        log(f"\n=== run {job.index + 1}/{total}: {describe(job)}")
        if manifest is not None:
            run_dir.on_create = lambda path, i=job.index: manifest.set_run_dir(i, path)
        started = time.monotonic()
        outcomes.append(run_one(job, log=log, command=command, quiet=quiet))
        durations.append(time.monotonic() - started)
        last = outcomes[-1]
        if last.status == "interrupted":
            log(f"interrupted during run {job.index + 1}/{total} {point.name}; "
                f"{len(jobs) - n} later run(s) not started")
            break
        if last.status != "completed":
            log(f"run {job.index + 1}/{total} {point.name} {last.status}: {last.error}")
        left = eta(durations, len(jobs) - n)
        if left is not None:
            log(f"{n} of {len(jobs)} runs done, ETA {format_duration(left)} for the other {len(jobs) - n}")
    return outcomes


def describe(job: Job) -> str:
    """``name (swept values) [source]``, and ``(resumed)`` for a job continuing its run directory."""
    point = job.point
    swept = ", ".join(f"{k}={v}" for k, v in point.values.items())
    return (f"{point.name}{f' ({swept})' if swept else ''} [{point.source}]"
            f"{' (resumed)' if job.run_dir.resuming else ''}")


def run_one(job: Job, *, log=print, command: Optional[str] = None, progress: Optional[bool] = None,
            dist=None, quiet: bool = False) -> Outcome:
    """Train one job; every way it can end becomes its Outcome, a stop signal included (``interrupted``, with
    the signal's exit code), so one broken point never costs the rest of the sweep."""
    point, run_dir = job.point, job.run_dir
    try:
        results = fit(job.cfg, run_dir, log=log, resume=job.ckpt, command=command, progress=progress,
                      quiet=quiet, **({"dist": dist} if dist is not None else {}))
        return Outcome(point, "completed", run_dir.path, results)
    except KeyboardInterrupt as e:
        code = e.exit_code if isinstance(e, Interrupted) else 130
        return Outcome(point, "interrupted", run_dir.path, error=run_dir.results.get("error") or "interrupted",
                       exit_code=code)
    except NonFiniteLoss as e:
        return Outcome(point, "diverged", run_dir.path, error=str(e))
    except (UserError, RunFailed) as e:
        return Outcome(point, "failed", run_dir.path, error=str(e),
                       traceback=run_dir.results.get("traceback") if run_dir.path else None)
    except Exception as e:  # noqa: BLE001 - one broken point must not cost the rest of the sweep
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return Outcome(point, "failed", run_dir.path, error=f"{type(e).__name__}: {first}",
                       traceback=traceback.format_exc())
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # an out-of-memory point should not starve the next one


def summary(outcomes: list[Outcome]) -> str:
    done = sum(o.status == "completed" for o in outcomes)
    lines = [f"{done} of {len(outcomes)} runs completed"]
    for o in outcomes:
        if o.status == "completed":
            r = o.results
            if o.skipped:
                lines.append(f"  done    {o.point.name}: best val acc {r['best_val_acc']:.2f}% (finished before)"
                             f" -> {o.run_dir}")
                continue
            lines.append(f"  ok      {o.point.name}: best val acc {r['best_val_acc']:.2f}% "
                         f"(epoch {r['best_epoch']}), final {r['final_val_acc']:.2f}% -> {o.run_dir}")
        else:
            lines.append(f"  {o.status:<7} {o.point.name}: {o.error}")
    return "\n".join(lines)

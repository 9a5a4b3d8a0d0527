"""The plan of a multi-run call and its data types: a ``Job`` (a point to run, fresh or continued), its
``Outcome``, and the ``Manifest`` (``sweep.json`` in the comparison directory) that lets ``--resume
COMPARE_DIR`` finish the call after a crash, SIGKILL or preemption.

Each point's run directory records its swept values and experiment name in results.json, so the comparison
(``plots``) groups repeats over seeds without parsing run names.
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from config import Config, from_dict
from config.sweep import Point
from core.errors import RunFailed, UserError
from core.files import atomic_write, strict_json
from core.log import get_logger
from core.status import FINISHED
from data import get_spec
from models import DATASET_KEYS, MODELS
from train.ending import Ending
from train.resume import anchor_paths, open_for_resume
from train.rundir import RunDir, is_live, read_results

log = get_logger(__name__)


@dataclass
class Outcome:
    """How one point of the call ended (``train.ending.Ending``), where, and with which results."""

    point: Point
    status: str  # completed | stopped_early | failed | diverged | interrupted
    run_dir: Optional[Path] = None  # None when the point failed before its run directory existed
    results: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  # one line
    traceback: Optional[str] = None  # for errors that are not the user's (a bug, out of memory, ...)
    exit_code: Optional[int] = None  # an interrupted point: the signal's exit code (130 Ctrl-C, 143 SIGTERM)
    skipped: bool = False  # finished before this call (a resumed sweep): not trained again

    @classmethod
    def ended(cls, point: Point, ending: Ending, run_dir: Optional[Path] = None,
              results: Optional[dict[str, Any]] = None) -> "Outcome":
        return cls(point, ending.status, run_dir, results or {}, error=ending.error, traceback=ending.traceback,
                   exit_code=ending.exit_code)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and pickle-safe): what a worker process hands back (launch/worker.py)."""
        return outcome_dict(self.point.name, Ending(self.status, self.error, self.traceback, self.exit_code),
                            self.run_dir, self.results)

    @classmethod
    def from_dict(cls, point: Point, d: dict[str, Any]) -> "Outcome":
        return cls(point, d["status"], Path(d["run_dir"]) if d.get("run_dir") else None, d.get("results") or {},
                   error=d.get("error"), traceback=d.get("traceback"), exit_code=d.get("exit_code"))


def outcome_dict(name: Optional[str], ending: Ending, run_dir: Optional[str | Path] = None,
                 results: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """An outcome as plain data; also for a worker that could not make its ``Point`` (a bad spec)."""
    return {"name": name, "status": ending.status, "run_dir": str(run_dir) if run_dir is not None else None,
            "results": results or {}, "error": ending.error, "traceback": ending.traceback,
            "exit_code": ending.exit_code}


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
                 cwd: Optional[str] = None, launcher: str = "local", slurm_jobs: Optional[list[Optional[str]]] = None,
                 tune: Optional[dict[str, Any]] = None):
        self.folder, self.command, self.points, self.run_dirs = folder, command, points, run_dirs
        self.tune = tune  # a tuned call's search (launch/tune.py): its spec, storage, experiments, whether done
        self.cwd = cwd or os.getcwd()  # where the call started: its configs' relative paths start there
        self.launcher = launcher  # local (in this process, or --jobs N) or slurm (launch/slurm.py)
        self.slurm_jobs = slurm_jobs or [None] * len(points)  # each point's latest SLURM job id

    @classmethod
    def start(cls, folder: Path, points: list[Point], command: str, launcher: str = "local",
              tune: Optional[dict[str, Any]] = None) -> "Manifest":
        m = cls(folder, command, points, [None] * len(points), launcher=launcher, tune=tune)
        m.save()
        return m

    @classmethod
    def holds(cls, folder: str | Path) -> bool:
        """Whether ``folder`` is a multi-run call's comparison directory."""
        return (Path(folder) / cls.FILE).is_file()

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        path = folder / cls.FILE
        try:
            raw = json.loads(path.read_text())
            points = [Point(p["name"], p["values"], from_dict(anchor_paths(p["config"], raw["cwd"])), p["source"],
                            p["experiment"], extra=dict(p.get("extra") or {})) for p in raw["points"]]
            run_dirs = [p.get("run_dir") for p in raw["points"]]
            slurm_jobs = [p.get("slurm_job") for p in raw["points"]]
            command, cwd, launcher = raw["command"], raw["cwd"], raw.get("launcher", "local")
            tune = raw.get("tune")
            if tune is not None and not isinstance(tune, dict):
                raise TypeError(f"tune: expected a mapping, got {type(tune).__name__}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a readable sweep manifest ({type(e).__name__}: {e})") from None
        except UserError as e:
            raise UserError(f"{path}: a point's config is not valid here ({e})") from None
        return cls(folder, command, points, run_dirs, cwd, launcher, slurm_jobs, tune)

    def resume_command(self) -> str:
        """The command that finishes this call (quoted: it runs as printed)."""
        return f"python main.py --resume {shlex.quote(str(self.folder))}"

    def set_run_dir(self, i: int, path: Path) -> None:
        self.run_dirs[i] = str(Path(path).resolve())  # absolute: a resume may start in another directory
        self.save()

    def add_points(self, points: list[Point], run_dirs: Optional[list[Optional[str]]] = None) -> None:
        """More points for the call (a tuned call's finals, launch/tune.py), recorded at once."""
        self.points += points
        self.run_dirs += run_dirs or [None] * len(points)
        self.slurm_jobs += [None] * len(points)
        self.save()

    def set_slurm_job(self, i: int, job_id: str) -> None:
        self.slurm_jobs[i] = job_id
        self.save()

    def save(self) -> None:
        points = [{"name": p.name, "values": p.values, "experiment": p.experiment, "source": p.source,
                   "config": p.cfg.to_dict(), "run_dir": d, **({"slurm_job": j} if j else {}),
                   **({"extra": p.extra} if p.extra else {})}
                  for p, d, j in zip(self.points, self.run_dirs, self.slurm_jobs)]
        try:
            atomic_write(self.folder / self.FILE, strict_json({"command": self.command, "cwd": self.cwd,
                                                               "launcher": self.launcher, "points": points,
                                                               **({"tune": self.tune} if self.tune else {})},
                                                              indent=2))
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

    def describe(self) -> str:
        """``name (swept values) [source]``, and ``(resumed)`` for a job continuing its run directory."""
        swept = ", ".join(f"{k}={v}" for k, v in self.point.values.items())
        return (f"{self.point.name}{f' ({swept})' if swept else ''} [{self.point.source}]"
                f"{' (resumed)' if self.run_dir.resuming else ''}")


def plan(manifest: Manifest, *, attached: frozenset[int] = frozenset()) -> tuple[list[Outcome], list[Job]]:
    """What a resumed call still has to do: completed, stopped_early and diverged points are kept as they are
    (a diverged run diverges again with the same seed), interrupted or killed ones continue from their
    last.pt, failed ones and those never started run from scratch. Points in ``attached`` (SLURM jobs
    still queued or running) are left to their jobs."""
    done, jobs = [], []
    for i, (point, folder) in enumerate(zip(manifest.points, manifest.run_dirs)):
        if i in attached:
            continue
        results = read_results(folder) if folder else None
        status = (results or {}).get("status")
        if folder and is_live(results or {}, folder):
            raise UserError(f"--resume {manifest.folder}: point {point.name} is still running "
                            f"(pid {(results or {}).get('pid')}, {folder}); stop it first")
        started = folder is not None and (Path(folder) / "config.yaml").is_file()
        if status in (*FINISHED, "diverged"):
            done.append(Outcome(point, status, Path(folder), results, error=results.get("error"), skipped=True))
        elif started and status != "failed":  # interrupted, or killed ("running" with its process gone)
            r = open_for_resume(folder, claim=False)  # its lock is taken where it runs (a --jobs worker)
            jobs.append(Job(i, point, r.run_dir, r.cfg, r.ckpt))
        else:  # failed, never started, or killed before it wrote its config: a new run directory
            jobs.append(Job(i, point, point_run_dir(point, i, manifest), point.cfg))
        if status == "failed":
            log.info(f"{point.name}: failed before ({results.get('error')}); running it again")
    return done, jobs


def point_run_dir(point: Point, index: int, manifest: Optional[Manifest] = None, *,
                  on_create: Sequence[Callable[[Path], None]] = (),
                  on_epoch: Sequence[Callable[[dict[str, Any]], None]] = ()) -> RunDir:
    """A new run directory for ``point``, the ``index``-th of its call, under its ``output.dir`` (made when its
    run starts; ``manifest`` records where). results.json records the index, so a comparison lists runs in
    sweep order. ``on_create`` and ``on_epoch``: more listeners (``RunDir``)."""
    recorded = [] if manifest is None else [lambda path: manifest.set_run_dir(index, path)]
    return RunDir(point.cfg.output.dir, point.cfg.run_name, extra={**point.record(), "point": index},
                  on_create=[*recorded, *on_create], on_epoch=on_epoch)


def jobs_for(points: list[Point], manifest: Optional[Manifest] = None) -> list[Job]:
    return [Job(i, p, point_run_dir(p, i, manifest), p.cfg) for i, p in enumerate(points)]


def summary(outcomes: list[Outcome]) -> str:
    done = sum(o.status in FINISHED for o in outcomes)
    lines = [f"{done} of {len(outcomes)} runs completed"]
    for o in outcomes:
        if o.status in FINISHED:
            r = o.results
            early = f", stopped early after epoch {r.get('stopped_epoch')}" if o.status == "stopped_early" else ""
            if o.skipped:
                lines.append(f"  done    {o.point.name}: best val acc {r['best_val_acc']:.2f}% (finished before)"
                             f" -> {o.run_dir}")
                continue
            lines.append(f"  ok      {o.point.name}: best val acc {r['best_val_acc']:.2f}% "
                         f"(epoch {r['best_epoch']}), final {r['final_val_acc']:.2f}%{early} -> {o.run_dir}")
        else:
            lines.append(f"  {o.status:<7} {o.point.name}: {o.error}")
    return "\n".join(lines)


class Executor(Protocol):
    """How a call runs its jobs: one after another here (``launch.run.Sequential``), up to N at once in local
    processes (``launch.local.Local``, ``--jobs N``), or as SLURM jobs (``launch.slurm.Slurm``). Each returns
    the outcome of every job it ran or knew of; a stop signal ends it early with the outcomes so far."""

    def run(self, jobs: list[Job], total: int, manifest: Manifest, command: str) -> list[Outcome]: ...

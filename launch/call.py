"""A multi-run call from start to comparison: ``run_call`` (several configs, or a sweep) and ``resume_call``
(``--resume COMPARE_DIR``) pick an executor, run the points and end with the comparison.

The comparison directory is made first and holds sweep.json, so ``--resume`` on it finishes the call if it is
stopped or killed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from config.sweep import Point
from core.cli import EXIT_INTERRUPTED, EXIT_RUN_FAILED
from core.errors import Interrupted, RunFailed, UserError
from core.lock import DirLock
from core.log import get_logger
from core.signals import stop_at_once
from core.status import FINISHED
from evaluate.compare import compare
from launch.local import Local, check_worker_imports, plan_workers
from launch.plan import Executor, Job, Manifest, Outcome, check_points, jobs_for, plan, summary
from launch.run import Sequential
from train.rundir import new_dir

log = get_logger(__name__)


def run_call(points: list[Point], out: Optional[str], command: str, jobs: Optional[int] = None,
             jobs_per_gpu: Optional[int] = None, launcher: str = "local", storage: Optional[str] = None) -> int:
    """Several runs, then their comparison in ``out`` (default: a new ``compare-DATE-TIME`` directory under the
    first point's ``output.dir``). Points with a ``tune:`` section are searched first (launch/tune.py), in the
    study ``storage`` (default: study.db in the comparison directory)."""
    check_points(points)
    tuned = any(p.tune is not None for p in points)
    if storage is not None and not tuned:
        raise UserError("--storage: the study database of a tune: section; this call has none")
    slurm_jobs = 1
    if launcher == "slurm" and (jobs is not None or jobs_per_gpu is not None):
        if not tuned or jobs_per_gpu is not None:
            raise UserError("--jobs: only with --launcher local; with slurm, each point is a job and the cluster "
                            "runs as many at once as it has room for (a tune: search: --jobs N worker jobs)")
        slurm_jobs, jobs = jobs, None
    workers = plan_workers(jobs, jobs_per_gpu)  # None: one after another, in this process
    if launcher == "slurm":
        from launch.slurm import Slurm, check_available

        check_available()
        executor: Executor = Slurm()
    else:
        executor = Sequential() if workers is None else Local(workers)
    if workers is not None:
        check_worker_imports()  # before anything is made
    out_dir, lock = _comparison_dir(out, points)
    with lock:
        if tuned:
            from launch.tune import start_block

            manifest = Manifest.start(out_dir, [], command, launcher, tune=start_block(points, out_dir, storage))
        else:
            manifest = Manifest.start(out_dir, points, command, launcher)
        log.info(f"comparison directory: {out_dir} (if this call stops: {manifest.resume_command()})")
        if not tuned:
            return _finish(manifest, [], jobs_for(points, manifest), executor, command)
        return _search_then_finish(manifest, workers, executor, command, slurm_jobs)


def _search_then_finish(manifest: Manifest, workers, executor: Executor, command: str, slurm_jobs: int = 1) -> int:
    """A tuned call: the search (launch/tune.py; skipped when done before), then its finals and the comparison."""
    if not manifest.tune.get("searched"):
        from launch.tune import search

        code = search(manifest, workers, command, slurm_jobs)
        if code is not None:
            return code
    done, todo = plan(manifest)
    return _finish(manifest, done, todo, executor, command)


def resume_call(folder: Path, overrides: list[str], command: str, jobs: Optional[int] = None,
                jobs_per_gpu: Optional[int] = None) -> int:
    """``--resume COMPARE_DIR``: the points still to run (``launch.plan.plan``), then the comparison."""
    if overrides:
        raise UserError(f"--set: not used when resuming the multi-run call in {folder}; its points keep their "
                        f"configs (extend a single run with --resume RUN_DIR --set train.epochs=N)")
    with DirLock(folder, "comparison directory"):  # one call finishes it; a second one at once is refused
        return _resume(folder, command, jobs, jobs_per_gpu)


def _resume(folder: Path, command: str, jobs: Optional[int], jobs_per_gpu: Optional[int]) -> int:
    manifest = Manifest.load(folder)
    if manifest.launcher == "slurm" and manifest.tune is not None and not manifest.tune.get("searched"):
        from launch.slurm import Slurm

        if jobs_per_gpu is not None:
            raise UserError(f"--jobs-per-gpu: {folder} is a SLURM call; its search runs in SLURM jobs (--jobs N)")
        log.info(f"{folder}: continuing the search")
        return _search_then_finish(manifest, None, Slurm(), command, jobs or 1)
    workers = plan_workers(jobs, jobs_per_gpu)
    attach: dict[int, str] = {}
    if manifest.launcher == "slurm":
        from launch.slurm import Slurm, attached_jobs, record_run_dirs

        if workers is not None:
            raise UserError(f"--jobs: {folder} is a SLURM call; its points run as SLURM jobs")
        record_run_dirs(manifest)  # jobs that started (or ended) while nobody watched
        attach = attached_jobs(manifest)  # still queued or running: wait for them
        executor: Executor = Slurm(attach)
    else:
        executor = Sequential() if workers is None else Local(workers)
        if workers is not None:
            check_worker_imports()
    if manifest.tune is not None and not manifest.tune.get("searched"):
        log.info(f"{folder}: continuing the search")
        return _search_then_finish(manifest, workers, executor, command)
    done, todo = plan(manifest, attached=frozenset(attach))
    log.info(f"{folder}: {len(done)} of {len(manifest.points)} runs already finished; "
             + (f"{len(attach)} still queued or running on SLURM; " if attach else "")
             + f"{len(todo)} to run or continue")
    return _finish(manifest, done, todo, executor, command)


def _comparison_dir(out: Optional[str], points: list[Point]) -> tuple[Path, DirLock]:
    """The call's comparison directory, and its lock, already held: two calls given one ``--out`` at once
    cannot both start there (the second is refused before it writes anything)."""
    if out is None:
        out_dir = new_dir(points[0].cfg.output.dir, "compare")
        return out_dir, DirLock(out_dir, "comparison directory").acquire()
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create ({e.strerror})") from None
    lock = DirLock(out_dir, "comparison directory").acquire()
    if Manifest.holds(out_dir):
        lock.release()
        raise UserError(f"--out {out}: already holds a multi-run call; continue it with --resume {out}, "
                        f"or pick another --out")
    return out_dir, lock


def _finish(manifest: Manifest, done: list[Outcome], todo: list[Job], executor: Executor, command: str) -> int:
    """Run ``todo``, then write the comparison of every point (``done`` finished before this call)."""
    outcomes = done + executor.run(todo, len(manifest.points), manifest, command)
    outcomes.sort(key=lambda o: manifest.points.index(o.point))
    log.info("\n" + summary(outcomes))
    failures = [{"name": o.point.name, "status": o.status, "error": o.error, "traceback": o.traceback}
                for o in outcomes if o.status not in FINISHED]
    started = {o.point.name for o in outcomes}
    failures += [{"name": p.name, "status": "not started", "error": "the call stopped before it", "traceback": None}
                 for p in manifest.points if p.name not in started]
    # A run that failed before writing its config (e.g. a full disk) is listed among the failures only.
    run_dirs = [o.run_dir for o in outcomes if o.run_dir is not None and (o.run_dir / "config.yaml").is_file()]
    first = manifest.points[0].cfg.output
    try:
        with stop_at_once():  # nothing to checkpoint: the resume writes the comparison again
            index = compare(run_dirs, manifest.folder, failures=failures, command=command, latency=first.latency,
                            latency_threads=first.latency_threads)
    except Interrupted as e:
        log.warning(f"stopped by {e.signame} while writing the comparison; every run is saved, and "
                    f"{manifest.resume_command()} writes it")
        return e.exit_code
    except RunFailed as e:  # e.g. a full disk: the runs are whole, the comparison can be written again
        raise RunFailed(f"{e}; every run is saved, and {manifest.resume_command()} writes the comparison") from None
    page = Path(index).with_name("index.html")
    log.info(f"comparison: {index}" + (f" (in a browser: {page})" if page.is_file() else ""))
    stopped = [o for o in outcomes if o.status == "interrupted"]
    if stopped:
        log.info(f"to finish the remaining runs: {manifest.resume_command()}")
        return stopped[0].exit_code or EXIT_INTERRUPTED
    return EXIT_RUN_FAILED if failures else 0

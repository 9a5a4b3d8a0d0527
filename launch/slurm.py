"""``--launcher slurm``: each point of a multi-run call as one SLURM job, submitted with submitit (the
library DeiT's ``run_with_submitit.py`` uses), then gathered into the comparison.

    python main.py --cfg configs/sweeps/fmnist_sizes.yaml --launcher slurm --set slurm.partition=gpu

A job runs ``SlurmPoint``, which runs the point as ``--jobs`` workers do (``launch.worker.run_point``), with
SIGUSR2 as one more stop signal: submitit asks SLURM for it 90 s before the time limit, and a cluster set to
signal preempted jobs sends it too. On it (or on SIGTERM) the run writes a resumable checkpoint at the
next step; after SIGUSR2 the job requeues itself (``scontrol requeue``), and a requeued job continues from
the run directory its first start made (recorded next to submitit's logs). A stopped job never returns a
result, so submitit does not take a half-trained point for a finished one. A job's result is plain data, and
this process reads it as such (``read_result``): a result file that names any class or function is refused,
never run.

This process records every job id in sweep.json and waits, showing one status line per point (read from
the run directories). If it is stopped or its shell goes away, the jobs go on: ``python main.py --resume
COMPARE_DIR`` waits for those still queued or running, submits again the points that need it, and writes
the comparison. A point with more than one task (``slurm.nodes`` x ``slurm.tasks_per_node``, which defaults to one per
GPU) trains with DDP (train/distributed.py), with the environment torchrun would set made from SLURM's by submitit.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, TextIO

from core.errors import UserError, one_line
from core.files import atomic_write, strict_json
from core.log import get_logger
from core.signals import GracefulStop, also_stop_on
from launch.board import StatusBoard, outcome_text
from launch.plan import Job, Manifest, Outcome, point_run_dir
from launch.worker import job_spec, run_point
from train.rundir import RunDir, read_results

POLL_S = 2.0
LOGS = "slurm"  # the comparison directory's folder for submitit's files and logs
log = get_logger(__name__)


# ----------------------------------------------------------------------------- in the job


class SlurmPoint:
    """What one job runs (pickled by submitit): the point's spec, and the file where its first start
    records its run directory so that a requeued start continues it."""

    def __init__(self, spec: dict[str, Any], marker: str):
        self.spec, self.marker = spec, marker

    def __call__(self) -> dict[str, Any]:
        # While the point runs (GracefulStop), SIGUSR2 is ours instead of submitit's: checkpoint at a step
        # boundary. Before that (joining the other tasks), submitit's handler requeues the job as it is.
        also_stop_on(signal.SIGUSR2)
        spec = dict(self.spec)
        marker = Path(self.marker)
        if not spec.get("run_dir") and marker.is_file():
            spec["run_dir"] = marker.read_text().strip()  # a requeued job: continue the run its first start made
        dist = _dist_from_slurm()

        def record(event: dict[str, Any]) -> None:
            if event["event"] == "run_dir":
                atomic_write(marker, event["path"] + "\n")

        from train import distributed

        distributed.start(dist)
        try:
            outcome = run_point(spec, record, dist=dist)
        finally:
            distributed.stop()
        code = outcome.get("exit_code")
        if outcome["status"] == "interrupted" and code:
            if code == 128 + signal.SIGUSR2 and dist.is_main:
                requeue("continue the point with --resume COMPARE_DIR")  # from last.pt, see __init__
            sys.exit(code)  # no result: the job is requeued (SLURM, or just above) or was cancelled
        # Plain data (a NumPy scalar becomes a float, NaN null), all that read_result accepts.
        return json.loads(strict_json(outcome))


def requeue(otherwise: str) -> None:
    """Time limit or preemption (SIGUSR2): this job continues in a new allocation (``scontrol requeue``); if
    SLURM refuses, a warning that ends with ``otherwise``, what the user can do instead."""
    job_id = os.environ.get("SLURM_JOB_ID", "")
    done = subprocess.run(["scontrol", "requeue", job_id], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        log.warning(f"scontrol requeue {job_id} failed: {done.stderr.strip() or done.returncode}; {otherwise}")


def _dist_from_slurm():
    """This task's place among the job's tasks: submitit's ``TorchDistributedEnvironment`` exports what torchrun
    would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...), which ``train.distributed.from_env`` reads."""
    from train.distributed import Dist, from_env

    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return Dist()
    import submitit.helpers

    # The port comes from the job id (submitit's choice) unless MASTER_PORT is set, and sbatch copies the
    # submitting shell's environment: without this, every job would take that one port.
    os.environ.pop("MASTER_PORT", None)
    # Each task sees every GPU of its node and takes cuda:LOCAL_RANK itself (train.distributed).
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return from_env()


# ----------------------------------------------------------------------------- submitting and waiting


def check_available() -> None:
    """One line when this machine cannot submit: no sbatch on PATH, or no submitit."""
    if shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: sbatch not found on PATH; run this on a SLURM login node, or run the "
                        "points here with --jobs N")
    if importlib.util.find_spec("submitit") is None:
        raise UserError("--launcher slurm: the submitit package is missing; pip install -r requirements.txt")


def parameters(job: Job) -> dict[str, Any]:
    """submitit's parameters for one point from its ``slurm:`` section."""
    return slurm_parameters(job.cfg, job.point.name)


def slurm_parameters(cfg, name: str, tasks: Optional[int] = None) -> dict[str, Any]:
    """submitit's parameters for a job named ``name`` from ``cfg``'s ``slurm:`` section (``tasks`` per node:
    the section's unless given)."""
    s = cfg.slurm
    gpus, tasks = s.gpus_per_node, tasks or s.tasks_per_node or max(1, s.gpus_per_node)
    params: dict[str, Any] = {"timeout_min": s.time_min, "nodes": s.nodes, "tasks_per_node": tasks,
                              "name": name[:100], "slurm_additional_parameters": dict(s.sbatch)}
    if gpus:
        params["gpus_per_node"] = gpus
    if s.partition:
        params["slurm_partition"] = s.partition
    if s.cpus_per_task:
        params["cpus_per_task"] = s.cpus_per_task
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    return params


def queue_states(job_ids: list[str]) -> Optional[dict[str, str]]:
    """The state of each job SLURM still holds (PENDING, RUNNING, REQUEUED, ...); None if squeue fails."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0].split("_")[0]] = parts[1]
    return states


class _Tracked:
    def __init__(self, job: Job, job_id: str, handle):
        self.job, self.job_id, self.handle = job, job_id, handle
        self.run_dir: Optional[str] = job.run_dir.path and str(job.run_dir.path)


def run_slurm(jobs: list[Job], total: int, manifest: Manifest, *, command: Optional[str] = None,
              attach: Optional[dict[int, str]] = None, out: Optional[TextIO] = None,
              live: Optional[bool] = None) -> list[Outcome]:
    """Submit ``jobs`` (and wait for the already submitted ones in ``attach``: point index -> job id); return
    every point's outcome once each job has ended, or, when this call is stopped, what is known by then."""
    import submitit

    check_available()
    folder = manifest.folder / LOGS
    attach = attach or {}
    index = {j.index: j for j in jobs}
    names = [manifest.points[i].name for i in sorted(set(index) | set(attach))]
    board = StatusBoard(names, out, live)
    row = {i: k for k, i in enumerate(sorted(set(index) | set(attach)))}
    outcomes: dict[int, Outcome] = {}
    tracked: dict[int, _Tracked] = {}
    with GracefulStop(announce=lambda text: None) as stop:
        for i, job_id in attach.items():
            job = Job(i, manifest.points[i], _run_dir_of(manifest, i), manifest.points[i].cfg)
            tracked[i] = _Tracked(job, job_id, submitit.SlurmJob(folder=folder, job_id=job_id))
        for job in jobs:
            if stop.requested:
                break
            ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
            ex.update_parameters(**parameters(job))
            spec = job_spec(job, command=command, cwd=manifest.cwd)
            try:
                handle = ex.submit(SlurmPoint(spec, str(folder / f"point-{job.index}.run_dir")))
            except Exception as e:  # noqa: BLE001 - sbatch's refusal (a partition that does not exist, ...)
                outcomes[job.index] = Outcome(job.point, "failed", job.run_dir.path, error=f"not submitted: {_brief(e)}")
                board.update(row[job.index], outcome_text(outcomes[job.index]))
                continue
            manifest.set_slurm_job(job.index, handle.job_id)
            tracked[job.index] = _Tracked(job, handle.job_id, handle)
            board.update(row[job.index], f"submitted as job {handle.job_id}, queued")
        board.note(f"{len(tracked)} SLURM job(s); logs in {folder}. If this call stops, the jobs go on: "
                   f"{manifest.resume_command()} waits for them and writes the comparison")
        try:
            _wait(tracked, outcomes, manifest, board, row, stop)
        finally:
            board.close()
    if tracked:  # stopped while waiting: the jobs still run on the cluster
        how = f"still queued or running on SLURM when this call stopped waiting; gather it with " \
              f"{manifest.resume_command()}"
        for i, t in tracked.items():
            outcomes[i] = Outcome(t.job.point, "interrupted", Path(t.run_dir) if t.run_dir else None,
                                  error=f"job {t.job_id} {how}", exit_code=128 + (stop.signum or signal.SIGINT))
    return [outcomes[i] for i in sorted(outcomes)]


def _wait(tracked: dict[int, _Tracked], outcomes: dict[int, Outcome], manifest: Manifest, board: StatusBoard,
          row: dict[int, int], stop: GracefulStop) -> None:
    warned = False
    while tracked and not stop.requested:
        states = queue_states([t.job_id for t in tracked.values()])
        if states is None and not warned:
            board.note("squeue does not answer; still waiting")
            warned = True
        for i, t in list(tracked.items()):
            _find_run_dir(t, manifest, i)
            state = None if states is None else states.get(t.job_id)
            if _task0(t).paths.result_pickle.exists():
                outcomes[i] = _from_result(t)
            elif states is not None and state is None:  # gone from the queue without a result
                outcomes[i] = _without_result(t)
            else:
                board.update(row[i], _progress(t, state))
                continue
            del tracked[i]
            board.update(row[i], outcome_text(outcomes[i]))
        if tracked:
            time.sleep(POLL_S)


def _find_run_dir(t: _Tracked, manifest: Manifest, i: int) -> None:
    if t.run_dir is None:
        marker = manifest.folder / LOGS / f"point-{i}.run_dir"
        if marker.is_file():
            t.run_dir = marker.read_text().strip()
            manifest.set_run_dir(i, Path(t.run_dir))


def _progress(t: _Tracked, state: Optional[str]) -> str:
    results = read_results(t.run_dir) if t.run_dir else None
    if not results or state in (None, "PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING"):
        done = f", {results.get('epochs_done', 0)} epoch(s) done" if results else ""
        return f"job {t.job_id} {(state or 'state unknown').lower()}{done}"
    best = f", best val acc {results['best_val_acc']:.2f}%" if results.get("best_val_acc") is not None else ""
    return f"job {t.job_id} running: epoch {results.get('epochs_done', 0)}/{results.get('epochs', '?')}{best}"


def _task0(t: _Tracked):
    """The job's first task (the job itself when it has one): rank 0 of a DDP point, whose result counts."""
    return t.handle.task(0)


class _Foreign(pickle.UnpicklingError):
    pass


class _PlainData(pickle.Unpickler):
    """Unpickles plain data only (str, bytes, numbers, True/False/None, and tuples, lists, sets and dicts of
    them): every class or function a pickle names is refused, so reading a result file runs nothing."""

    def find_class(self, module: str, name: str):
        raise _Foreign(f"it names {module}.{name}, and a job's result is plain data")


def read_result(path: Path) -> tuple[str, Any]:
    """What submitit wrote when a job ended (its ``*_result.pkl``): ``("success", the outcome dict)`` or
    ``("error", the job's traceback)``, read by ``_PlainData`` instead of submitit's plain ``pickle.load``,
    which would run whatever the file names. Raises ValueError saying why a file is not such a result."""
    try:
        with open(path, "rb") as f:
            output = _PlainData(f).load()
    except OSError as e:
        raise ValueError(f"cannot read it ({e.strerror or e})") from None
    except _Foreign as e:
        raise ValueError(f"refused: {e}") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle fails in arbitrary ways
        raise ValueError(f"damaged ({one_line(e, 200)})") from None
    if not (isinstance(output, tuple) and len(output) == 2 and output[0] in ("success", "error")):
        raise ValueError(f"holds {type(output).__name__}, not submitit's (outcome, result) pair")
    kind, value = output
    if kind == "error" and not isinstance(value, str):
        raise ValueError(f"an error whose traceback is {type(value).__name__}, not text")
    if kind == "success" and not (isinstance(value, dict) and isinstance(value.get("status"), str)):
        raise ValueError(f"the job returned {type(value).__name__}, not an outcome")
    return kind, value


def _from_result(t: _Tracked) -> Outcome:
    """Task 0's result, read from the file it wrote (the job's own ``result()`` would wait on every task, asking
    sacct, which clusters without accounting never answer, about those that wrote none)."""
    task = _task0(t)
    run_dir = Path(t.run_dir) if t.run_dir else None
    path = task.paths.result_pickle
    try:
        kind, value = read_result(path)
    except ValueError as e:
        return Outcome(t.job.point, "failed", run_dir, error=f"job {t.job_id}: its result {path} was not read: {e}; "
                                                              f"its log: {task.paths.stderr}")
    if kind == "error":
        return Outcome(t.job.point, "failed", run_dir, error=f"job {t.job_id} failed: {_brief(Exception(value))}; "
                                                              f"its log: {task.paths.stderr}", traceback=value)
    return Outcome.from_dict(t.job.point, value)


def _without_result(t: _Tracked) -> Outcome:
    """A job SLURM no longer holds that returned nothing: cancelled, killed (out of memory, node failure),
    or stopped by a signal it was not requeued after. The run directory says how far it got."""
    results = (read_results(t.run_dir) if t.run_dir else None) or {}
    status = results.get("status")
    log = _task0(t).paths.stderr
    if status == "interrupted":
        return Outcome(t.job.point, "interrupted", Path(t.run_dir), results,
                       error=f"job {t.job_id} was stopped and not requeued ({results.get('error', '').split(';')[0]}); "
                             f"continue it with --resume", exit_code=None)
    where = f"after {results.get('epochs_done', 0)} epoch(s)" if results else "before its run directory existed"
    return Outcome(t.job.point, "failed", Path(t.run_dir) if t.run_dir else None,
                   error=f"job {t.job_id} ended without a result {where} (cancelled, killed, or out of memory); "
                         f"its log: {log}")


def _run_dir_of(manifest: Manifest, i: int) -> RunDir:
    """Where an attached point's job trains (it holds the run's lock; this process only reads it)."""
    d = manifest.run_dirs[i]
    return RunDir.existing(d, claim=False) if d and Path(d).is_dir() else point_run_dir(manifest.points[i], i)


def _brief(e: BaseException) -> str:
    """sbatch's or the job's message in one line (submitit puts sbatch's stderr in the exception text)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    text = (errors or lines or [type(e).__name__])[-1 if errors else 0]
    return text[:300]


def record_run_dirs(manifest: Manifest) -> None:
    """Put into sweep.json the run directories jobs made while no submitter was watching (their markers)."""
    for i in range(len(manifest.points)):
        marker = manifest.folder / LOGS / f"point-{i}.run_dir"
        if marker.is_file():
            path = marker.read_text().strip()
            if path and path != manifest.run_dirs[i]:
                manifest.set_run_dir(i, Path(path))


def attached_jobs(manifest: Manifest) -> dict[int, str]:
    """The points of a SLURM call whose jobs SLURM still holds (queued, running or requeued)."""
    ids = {i: j for i, j in enumerate(manifest.slurm_jobs) if j}
    if not ids:
        return {}
    check_available()
    states = queue_states(list(ids.values()))
    if states is None:
        raise UserError(f"--resume {manifest.folder}: squeue does not answer, so it cannot tell which of its SLURM "
                        f"jobs still run; try again when it does")
    return {i: j for i, j in ids.items() if j in states}


class Slurm:
    """The ``--launcher slurm`` executor: each job a SLURM job; ``attach``: point index -> the job id of a point
    already queued or running (a resumed call waits for it)."""

    def __init__(self, attach: Optional[dict[int, str]] = None):
        self.attach = attach or {}

    def run(self, jobs: list[Job], total: int, manifest: Manifest, command: Optional[str] = None) -> list[Outcome]:
        return run_slurm(jobs, total, manifest, command=command, attach=self.attach)

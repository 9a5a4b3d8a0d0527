"""Smoke-check submitit against the local test cluster (tests/slurm/start.sh).

    .venv/bin/python tests/slurm/check_submitit.py                 # basic, array, batch
    .venv/bin/python tests/slurm/check_submitit.py requeue interrupt usr2 preempt timeout

Scenarios (each prints one JSON line; exit status 1 if any check failed):
  basic      submit f() -> 42 with AutoExecutor, .result()
  array      executor.map_array over 4 inputs
  batch      `with executor.batch():` 3 submits (one array job)
  requeue    external `scontrol requeue JOBID` on a running Checkpointable job
  trainer    like requeue, but the function handles SIGTERM itself (save to disk, exit)
             and resumes from disk: how a graceful-stop trainer fits submitit
  trainer-preempt  the trainer under real preemption (USR2 -> checkpoint())
  interrupt  submitit's own test hook job._interrupt() (scancel --signal TERM, then USR2)
  usr2       `scancel --signal=USR2 JOBID` only (what --signal=USR2@90 sends before the limit)
  preempt    real preemption: a job in partition `urgent` needing all CPUs preempts it
  timeout    a job with timeout_min=2 runs into its limit (USR2 at T-90s)

Not a pytest module on purpose (name does not match test_*.py): it needs a live cluster
and takes minutes. Job folders go to $CHECK_SUBMITIT_DIR/<timestamp>/ (default
/tmp/vitlab-submitit).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit

# A fresh folder per run: job ids restart at 1 after `stop.sh --purge`, and a stale
# <jobid>_result.pkl in a reused folder would look like a finished job to submitit.
ROOT = Path(os.environ.get("CHECK_SUBMITIT_DIR", "/tmp/vitlab-submitit")) / time.strftime("%Y%m%d-%H%M%S")
WATCHED = ("SIGTERM", "SIGUSR2", "SIGUSR1", "SIGCONT", "SIGINT", "SIGHUP")


def answer() -> int:
    return 42


def square(x: int) -> int:
    return x * x


class Looper(submitit.helpers.Checkpointable):
    """Counts to `steps` (1 s each); records starts, signals and checkpoint() calls in a file."""

    def __init__(self, steps: int, record: str) -> None:
        self.steps = steps
        self.record = record
        self.done = 0
        self.starts = 0

    def _log(self, **kw) -> None:
        kw.update(t=round(time.time(), 2), pid=os.getpid(), job=os.environ.get("SLURM_JOB_ID"),
                  restart=os.environ.get("SLURM_RESTART_COUNT", "0"))
        with open(self.record, "a") as f:
            f.write(json.dumps(kw) + "\n")

    def _watch_signals(self) -> None:
        # Wrap whatever handler submitit installed, so we see each signal that reaches
        # this Python process before submitit handles it.
        for name in WATCHED:
            sig = getattr(signal, name)
            old = signal.getsignal(sig)

            def handler(signum, frame, old=old, name=name):
                self._log(event="signal", sig=name, submitit_handler=getattr(old, "__name__", str(old)))
                if callable(old):
                    old(signum, frame)
                elif old == signal.SIG_DFL and signum not in (signal.SIGCONT,):
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)

            signal.signal(sig, handler)

    def __call__(self) -> dict:
        self.starts += 1
        self._log(event="start", from_step=self.done, starts=self.starts)
        self._watch_signals()
        while self.done < self.steps:
            time.sleep(1)
            self.done += 1
        self._log(event="finish", steps=self.done)
        return {"steps": self.done, "starts": self.starts}

    def checkpoint(self, *args, **kwargs):
        self._log(event="checkpoint", at_step=self.done)
        return super().checkpoint(*args, **kwargs)


class Trainer(submitit.helpers.Checkpointable):
    """Like our training loop: own SIGTERM/SIGINT/SIGHUP handler = "finish the step, save a
    checkpoint to disk, exit"; resumes from the disk checkpoint at start. checkpoint()
    (submitit's USR2 path) also saves to disk. Exits with sys.exit (SystemExit is not an
    Exception, so submitit writes no result pickle for the interrupted run)."""

    def __init__(self, steps: int, record: str) -> None:
        self.steps = steps
        self.record = record
        self.ckpt = record + ".ckpt"
        self.stop = None

    _log = Looper._log

    def _save(self, step: int) -> None:
        Path(self.ckpt).write_text(str(step))

    def __call__(self) -> dict:
        step = int(Path(self.ckpt).read_text()) if Path(self.ckpt).exists() else 0
        self._log(event="start", from_step=step)
        Looper._watch_signals(self)  # log what arrives, then the handler below
        for name in ("SIGTERM", "SIGINT", "SIGHUP"):
            sig = getattr(signal, name)
            logger = signal.getsignal(sig)

            def graceful(signum, frame, logger=logger, name=name):
                logger(signum, frame)  # -> record + submitit's bypass
                self.stop = name

            signal.signal(sig, graceful)
        self.step = step
        while self.step < self.steps:
            time.sleep(1)
            self.step += 1
            if self.stop:
                self._save(self.step)
                self._log(event="graceful_stop", sig=self.stop, saved_step=self.step)
                sys.exit(3)
        self._log(event="finish", steps=self.step)
        return {"steps": self.step, "starts": None}

    def checkpoint(self, *args, **kwargs):
        self._save(self.step)
        self._log(event="checkpoint", saved_step=self.step)
        return submitit.helpers.DelayedSubmission(Trainer(self.steps, self.record))


def executor(name: str, **params) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=ROOT / name / "%j")
    assert ex.cluster == "slurm", f"AutoExecutor picked {ex.cluster!r}, not slurm (no sbatch on PATH?)"
    base = dict(slurm_partition="debug", timeout_min=5, cpus_per_task=1, mem_gb=1, slurm_array_parallelism=2)
    base.update(params)
    ex.update_parameters(**base)
    return ex


def result(job, timeout_s: float):
    """job.result() with a deadline: without accounting, sacct fails, so submitit only sees
    the result pickle and would wait forever for a job that died without one."""
    deadline = time.time() + timeout_s
    while not job.done():
        if time.time() > deadline:
            raise TimeoutError(f"job {job.job_id} not done after {timeout_s}s")
        time.sleep(1)
    return job.result()


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def job_field(job_id: str, field: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    for tok in out.split():
        if tok.startswith(field + "="):
            return tok.split("=", 1)[1]
    return ""


def wait_running(job, timeout_s: float = 60, after_step: float = 3) -> None:
    deadline = time.time() + timeout_s
    while job_field(job.job_id, "JobState") != "RUNNING":
        if time.time() > deadline:
            raise TimeoutError(f"job {job.job_id} not running")
        time.sleep(0.5)
    time.sleep(after_step)  # let submitit install its handlers and the loop start


def read_record(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def gone(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.returncode != 0 or not out.stdout.strip()


def looper_scenario(name: str, trigger, steps: int = 20, timeout_s: float = 600, cls=Looper, **params) -> dict:
    rec = ROOT / name / "record.jsonl"
    rec.parent.mkdir(parents=True, exist_ok=True)
    for f in (rec, Path(str(rec) + ".ckpt")):
        f.unlink(missing_ok=True)
    job = executor(name, **params).submit(cls(steps, str(rec)))
    t0 = time.time()
    wait_running(job)
    extra = trigger(job) or {}
    out: dict = {"job": job.job_id, **extra}
    try:
        out["result"] = result(job, timeout_s)
    except Exception as e:  # noqa: BLE001 - report, don't crash the other scenarios
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    out["result_after_s"] = round(time.time() - t0, 1)
    # The result pickle can appear while Slurm still has the job (requeued): wait until
    # the job has really left the queue, so every run shows up in the record.
    deadline = time.time() + timeout_s
    while not gone(job.job_id) and time.time() < deadline:
        time.sleep(1)
    out["left_queue_after_s"] = round(time.time() - t0, 1)
    out["restart_count"] = job_field(job.job_id, "Restarts")
    events = read_record(rec)
    t_first = events[0]["t"] if events else 0
    out["events"] = [
        {k: (round(v - t_first, 1) if k == "t" else v) for k, v in e.items() if k not in ("pid",)} for e in events
    ]
    out["ok"] = isinstance(out.get("result"), dict) and out["result"]["steps"] == steps
    return out


def preempt_trigger(job) -> dict:
    """Submit a job to partition `urgent` (higher PriorityTier) that needs every CPU."""
    total = int(sh("sinfo", "-h", "-p", "urgent", "-o", "%c"))
    hi = sh("sbatch", "--parsable", "-p", "urgent", f"-c{total}", "--mem=100",
            "-o", str(ROOT / "urgent-%j.out"), "--wrap", "sleep 5; echo urgent done")
    return {"urgent_job": hi}


def run(name: str) -> dict:
    if name == "basic":
        job = executor("basic").submit(answer)
        r = result(job, 120)
        return {"job": job.job_id, "result": r, "state_via_sacct": job.state, "ok": r == 42}
    if name == "array":
        jobs = executor("array").map_array(square, range(4))
        r = [result(j, 180) for j in jobs]
        return {"jobs": [j.job_id for j in jobs], "result": r, "ok": r == [0, 1, 4, 9]}
    if name == "batch":
        ex = executor("batch")
        with ex.batch():
            jobs = [ex.submit(square, x) for x in (5, 6, 7)]
        r = [result(j, 180) for j in jobs]
        return {"jobs": [j.job_id for j in jobs], "result": r, "ok": r == [25, 36, 49]}
    if name == "requeue":  # 60 steps > KillWait (30 s): shows the SIGKILL and the restart
        return looper_scenario("requeue", lambda job: {"scontrol": sh("scontrol", "requeue", job.job_id)}, steps=60)
    if name == "trainer":  # our trainer's own SIGTERM handling + external requeue
        return looper_scenario("trainer", lambda job: {"scontrol": sh("scontrol", "requeue", job.job_id)},
                               cls=Trainer)
    if name == "trainer-preempt":
        return looper_scenario("trainer-preempt", preempt_trigger, cls=Trainer)
    if name == "interrupt":
        return looper_scenario("interrupt", lambda job: job._interrupt())
    if name == "usr2":
        return looper_scenario("usr2", lambda job: sh("scancel", "--signal=USR2", job.job_id) and None)
    if name == "preempt":
        return looper_scenario("preempt", preempt_trigger)
    if name == "timeout":
        # --signal=USR2@90 with a 2-minute limit: USR2 arrives ~30 s in, submitit sees a
        # timeout (not a preemption), checkpoints and requeues; 60 steps need 2 runs.
        return looper_scenario("timeout", lambda job: None, steps=60, timeout_s=900, timeout_min=2)
    raise SystemExit(f"unknown scenario {name}")


def main() -> int:
    names = sys.argv[1:] or ["basic", "array", "batch"]
    # Without accounting every sacct poll fails and submitit warns; state comes from the
    # result pickle instead. Keep the output readable.
    logging.getLogger("submitit").setLevel(logging.ERROR)
    print(json.dumps({"submitit": submitit.__version__, "folder": str(ROOT)}), flush=True)
    failed = 0
    for name in names:
        t0 = time.time()
        try:
            out = run(name)
        except Exception as e:  # noqa: BLE001
            out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out = {"scenario": name, "seconds": round(time.time() - t0, 1), **out}
        failed += not out.get("ok")
        print(json.dumps(out), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

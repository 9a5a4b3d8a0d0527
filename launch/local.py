"""``--jobs N``: up to N points of a multi-run call at once on this machine, each in its own process
(``python -m launch.worker``), with one live status line per point on the console.

Only this process writes ``sweep.json``: a worker reports its run directory as an event and the launcher
records it. GPUs are handed out round-robin by slot (``CUDA_VISIBLE_DEVICES``), and the torch threads a
single run would use here are divided between the workers. A stop signal (Ctrl-C, SIGTERM, SIGHUP) is
passed on to the running points, which checkpoint and stop; queued points are not started. Workers run in
their own session, so Ctrl-C in a terminal reaches them once, through the launcher; if the launcher is
killed, the kernel sends them SIGTERM (launch/worker.py: ``die_with_parent``).
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

import torch

from core.errors import RunFailed, UserError
from core.signals import SIGNALS
from core.text import eta, format_duration
from launch.board import StatusBoard, outcome_text, status_text
from launch.plan import Job, Manifest, Outcome
from launch.worker import job_spec
from train.threads import auto_threads, available_cores

WORKER = (sys.executable, "-m", "launch.worker")


@dataclass
class Workers:
    """How a call runs its points: ``count`` at once, slot k on GPU ``gpus[k % len(gpus)]`` (none: the CPU),
    each with ``threads`` torch threads."""

    count: int
    gpus: list[str] = field(default_factory=list)
    threads: int = 1

    def gpu(self, slot: int) -> Optional[str]:
        return self.gpus[slot % len(self.gpus)] if self.gpus else None

    def describe(self) -> str:
        where = (f"on {len(self.gpus)} GPU(s) ({', '.join(self.gpus)}), " if self.gpus else "") + \
            f"{self.threads} CPU thread(s) each"
        return f"up to {self.count} runs at once, each in its own process, {where}"


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (indices or UUIDs)."""
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in listed.split(",") if d.strip()][:count]


def plan_workers(jobs: Optional[int], per_gpu: Optional[int], *, gpus: Optional[list[str]] = None,
                 threads: Optional[int] = None) -> Optional[Workers]:
    """``--jobs`` and ``--jobs-per-gpu`` as a plan; None runs the points here, one after another (``--jobs 1``).

    With GPUs, ``--jobs-per-gpu K`` alone means K points per GPU (N = K x GPUs); ``--jobs N`` alone shares the
    GPUs round-robin; both: at most K per GPU. Without a GPU, ``--jobs-per-gpu`` is an error. The threads one
    run would use (``train.threads: auto``: the cores here, at most torch's own count) are divided between the N
    workers, at least one each, whatever number of points is left; that share is what ``auto`` means in a worker.
    A point with a number in ``train.threads`` trains with that number (``oversubscribed`` warns when they add
    up to more than the cores). A resumed point trains with the count its last.pt recorded, so the same
    floating-point bits on a CPU (the thread count changes the order of reductions)."""
    if per_gpu is None and jobs in (None, 1):
        return None  # today's path: nothing asked of CUDA
    gpus = visible_gpus() if gpus is None else gpus
    if per_gpu is not None and not gpus:
        raise UserError(f"--jobs-per-gpu {per_gpu}: no CUDA GPU is visible here; "
                        f"use --jobs N to run N points at once on the CPU")
    if jobs is None:
        jobs = per_gpu * len(gpus) if per_gpu is not None else 1
    elif per_gpu is not None and jobs > per_gpu * len(gpus):
        raise UserError(f"--jobs {jobs}: more than --jobs-per-gpu {per_gpu} x {len(gpus)} GPU(s) = "
                        f"{per_gpu * len(gpus)}; lower --jobs or raise --jobs-per-gpu")
    if jobs == 1:
        return None
    threads = auto_threads() if threads is None else threads  # the cores here, at most torch's own count
    return Workers(jobs, gpus, max(1, threads // jobs))


def oversubscribed(workers: Workers, jobs: list[Job], cores: Optional[int] = None) -> Optional[str]:
    """One line when the points' explicit ``train.threads`` (``auto`` takes the worker's share) add up to more
    threads at once than this machine's cores: they would wait for each other at every op."""
    if all(job.cfg.train.threads == "auto" for job in jobs):
        return None  # divided by plan_workers: never more than the cores
    cores = available_cores() if cores is None else cores
    each = sorted((workers.threads if j.cfg.train.threads == "auto" else j.cfg.train.threads for j in jobs),
                  reverse=True)
    busiest = sum(each[:workers.count])
    if busiest <= cores:
        return None
    return (f"warning: --jobs {workers.count} with the points' train.threads: up to {busiest} threads at once on "
            f"{cores} core(s); they will fight for the cores, each run slower than alone; lower --jobs or "
            f"train.threads (train.threads: auto divides the cores between the runs)")


# ----------------------------------------------------------------------------- the workers


class _Worker:
    """One point's process: its event and stderr pipes, what it has said so far."""

    def __init__(self, job: Job, slot: int, proc: subprocess.Popen):
        self.job, self.slot, self.proc = job, slot, proc
        self.buffers = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}
        self.open = set(self.buffers)
        self.outcome: Optional[Outcome] = None
        self.log: Optional[str] = None
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.signalled: Optional[int] = None  # the stop signal passed on to it
        self.started = time.monotonic()

    def signal(self, signum: int) -> None:
        self.signalled = self.signalled or signum
        self.proc.send_signal(signum)  # does nothing once the process has been reaped


class _Launcher:
    def __init__(self, jobs: list[Job], workers: Workers, manifest: Optional[Manifest],
                 command: Optional[str], board: StatusBoard, argv: tuple[str, ...]):
        self.queue, self.workers, self.manifest = deque(jobs), workers, manifest
        self.command, self.board, self.argv = command, board, argv
        self.rows = {job.index: row for row, job in enumerate(jobs)}  # a point's line on the board
        self.running: dict[int, _Worker] = {}  # by slot
        self.free = deque(range(min(workers.count, len(jobs))))
        self.outcomes: list[Outcome] = []
        self.selector = selectors.DefaultSelector()
        self.signum: Optional[int] = None  # the first stop signal this process got
        self.told = 0  # stop signals announced on the console so far
        self.received: list[tuple[int, int]] = []  # (signal, running points it was passed on to)
        self.stopping: Optional[Outcome] = None  # the first point that was interrupted
        self.durations: list[float] = []  # of the points finished so far, for the ETA

    # Signals: passed on at once (os.kill is safe in a handler); the console hears of it from the loop,
    # since printing in a handler could re-enter a write in progress.
    def _handle(self, signum: int, frame) -> None:
        self.signum = self.signum or signum
        running = list(self.running.values())
        self.received.append((signum, len(running)))
        for w in running:
            w.signal(signum)

    def run(self) -> list[Outcome]:
        previous = {}
        if threading.current_thread() is threading.main_thread():  # where Python can install handlers
            previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        try:
            while self.queue or self.running:
                while self.queue and self.free and self.signum is None and self.stopping is None:
                    self._start(self.queue.popleft(), self.free.popleft())
                self._announce()
                if not self.running:
                    break
                self._read(timeout=0.5)
                self._announce()
                for slot, w in list(self.running.items()):
                    if w.proc.poll() is not None:
                        self._finish(w)
            self._announce()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.selector.close()
        if self.queue:  # stopped: say so for the first point left, as a sequential call does
            signum = self.signum or (self.stopping.exit_code or 130) - 128
            self.outcomes.append(Outcome(self.queue[0].point, "interrupted", None,
                                         error="not started: the call was stopped", exit_code=128 + signum))
            self.board.note(f"{len(self.queue)} queued run(s) not started")
        return self.outcomes

    def _announce(self) -> None:
        for signum, running in self.received[self.told:]:
            name = signal.Signals(signum).name
            if self.told == 0:
                self.board.note(f"{name} received: passed on to the {running} running point(s), which "
                                f"write a resumable checkpoint and stop; {len(self.queued_names())} queued will "
                                f"not start (send it again to stop the running ones at once)")
            else:
                self.board.note(f"{name} received again: passed on (the running points stop at once)")
            self.told += 1

    def queued_names(self) -> list[str]:
        return [j.point.name for j in self.queue]

    def _start(self, job: Job, slot: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.workers.threads)}
        gpu = self.workers.gpu(slot)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        spec = job_spec(job, command=self.command, threads=self.workers.threads)
        # Its own session: Ctrl-C in a terminal signals the launcher's process group only, and the
        # launcher passes it on once (twice would stop the points without their checkpoint).
        proc = subprocess.Popen([*self.argv, "--parent", str(os.getpid())], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
        w = _Worker(job, slot, proc)
        self.running[slot] = w
        if self.signum is not None:  # the signal came while it was being started
            w.signal(self.signum)
        for fd in w.buffers:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, w)
        try:
            proc.stdin.write(json.dumps(spec).encode())
            proc.stdin.close()
        except OSError:  # it died at once; _finish reports how
            pass
        self.board.update(self.rows[job.index], "starting" + (f" on GPU {gpu}" if gpu is not None else ""))

    def _read(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            self._drain(key.data, key.fd)

    def _drain(self, w: _Worker, fd: int) -> None:
        while fd in w.open:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # end of file
                w.open.discard(fd)
                self.selector.unregister(fd)
                data = b"\n" if w.buffers[fd] else b""
            *lines, w.buffers[fd] = (w.buffers[fd] + data).split(b"\n")
            for line in lines:
                self._line(w, line.decode(errors="replace"), events=fd == w.proc.stdout.fileno())

    def _line(self, w: _Worker, text: str, events: bool) -> None:
        row, name = self.rows[w.job.index], w.job.point.name
        try:
            event = json.loads(text) if events else None
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            if text.strip():  # stray output before its run directory existed (a warning, a crash)
                w.stderr_tail.append(text)
                self.board.note(f"{name}: {text}")
            return
        if event["event"] == "run_dir":
            w.log = event["log"]
            if self.manifest is not None and not w.job.run_dir.resuming:
                try:
                    self.manifest.set_run_dir(w.job.index, Path(event["path"]))
                except RunFailed as e:
                    self.board.note(f"warning: {e}; --resume will not find {name}'s run directory")
            self.board.note(f"{name}: log in {w.log}")
            self.board.update(row, status_text(event))
        elif event["event"] == "epoch":
            self.board.update(row, status_text(event))
        elif event["event"] == "outcome":  # shown now; the slot is free once the process has ended
            w.outcome = Outcome.from_dict(w.job.point, event["outcome"])
            self.board.update(row, outcome_text(w.outcome))

    def _finish(self, w: _Worker) -> None:
        for fd in list(w.open):  # what it wrote before it ended
            self._drain(w, fd)
        for fd in list(w.open):  # a child of it still holds the pipe: stop listening
            w.open.discard(fd)
            self.selector.unregister(fd)
        for stream in (w.proc.stdout, w.proc.stderr):
            stream.close()
        del self.running[w.slot]
        self.free.append(w.slot)
        outcome = w.outcome or self._lost(w)
        self.outcomes.append(outcome)
        self.board.update(self.rows[w.job.index], outcome_text(outcome))
        if outcome.status == "interrupted" and self.stopping is None:
            self.stopping = outcome  # as in a sequential call, an interrupted point ends the call
        self.durations.append(time.monotonic() - w.started)
        left = len(self.queue) + len(self.running)
        # Rough: the mean time per point, for the points left, shared by the slots.
        remaining = eta(self.durations, left)
        if remaining is not None and self.signum is None and self.stopping is None:
            done = len(self.outcomes)
            self.board.note(f"{done} of {done + left} runs done, ETA "
                            f"{format_duration(remaining / min(self.workers.count, left))}")

    def _lost(self, w: _Worker) -> Outcome:
        """A worker that ended without an outcome: killed (SIGKILL, out of memory) or crashed."""
        code = w.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        run_dir = w.job.run_dir.path if w.job.run_dir.resuming else None
        if w.log:
            run_dir = Path(w.log).parent
        if w.signalled and code in (-w.signalled, 128 + w.signalled):  # stopped before it could answer
            return Outcome(w.job.point, "interrupted", run_dir, exit_code=128 + w.signalled,
                           error=f"stopped by {signal.Signals(w.signalled).name} ({how})")
        where = f"log: {w.log}" if w.log else \
            (f"last output: {w.stderr_tail[-1]}" if w.stderr_tail else "before its run directory existed")
        return Outcome(w.job.point, "failed", run_dir, error=f"worker process {how}; {where}",
                       traceback="\n".join(w.stderr_tail) or None)


def run_parallel(jobs: list[Job], total: int, workers: Workers, *, manifest: Optional[Manifest] = None,
                 command: Optional[str] = None, out: Optional[TextIO] = None, live: Optional[bool] = None,
                 argv: tuple[str, ...] = WORKER) -> list[Outcome]:
    """Run ``jobs`` (of a call of ``total`` points), up to ``workers.count`` at once, each in a worker process
    (``argv``); returns their outcomes as ``launch.run.Sequential`` does."""
    board = StatusBoard([j.point.name for j in jobs], out, live)
    board.note(f"{len(jobs)} of {total} run(s) to run, {workers.describe()}; each run's log goes to train.log "
               f"in its run directory")
    crowded = oversubscribed(workers, jobs)
    if crowded:
        board.note(crowded)
    try:
        return _Launcher(jobs, workers, manifest, command, board, argv).run()
    finally:
        board.close()


def check_worker_imports() -> None:
    """A worker (``python -m launch.worker``, started in this directory) imports ``launch`` from here or from the
    installed package: one line if that would not be this code (not installed, or another copy installed)."""
    here = Path(__file__).resolve().parent
    probe = subprocess.run([sys.executable, "-c", "import launch, sys; sys.stdout.write(launch.__file__)"],
                           capture_output=True, text=True, timeout=120)
    found = Path(probe.stdout).resolve().parent if probe.returncode == 0 and probe.stdout else None
    if found != here:
        where = f"they would import {found}" if found else "they would not find the launch package"
        raise UserError(f"--jobs: worker processes started in {Path.cwd()} would not run this code ({where}); "
                        f"install it with pip install -e {here.parent} (README 'Install')")


class Local:
    """The ``--jobs N`` executor: ``run_parallel`` with this call's ``Workers``."""

    def __init__(self, workers: Workers):
        self.workers = workers

    def run(self, jobs: list[Job], total: int, manifest: Optional[Manifest] = None,
            command: Optional[str] = None) -> list[Outcome]:
        return run_parallel(jobs, total, self.workers, manifest=manifest, command=command)

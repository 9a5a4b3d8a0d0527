"""Running points in this process: one point (``run_one``, also what a worker process runs), and the sequential
executor, one point after another with ``k of n done, ETA`` after each.

A failed, diverged or interrupted point is recorded and the rest go on; a stop signal (Ctrl-C, SIGTERM,
SIGHUP) ends the call after the current point has checkpointed (between points: before the next starts).
"""
from __future__ import annotations

import signal
import time
from typing import Optional

import torch

from core.log import get_logger
from core.signals import GracefulStop
from core.status import FINISHED
from core.text import eta, format_duration
from launch.plan import Job, Manifest, Outcome
from train.distributed import Dist
from train.ending import Ending, ending_of
from train.fit import fit
from train.stopping import Stopper

log = get_logger(__name__)


def run_one(job: Job, *, command: Optional[str] = None, progress: Optional[bool] = None,
            dist: Dist = Dist(), stopper: Optional[Stopper] = None) -> Outcome:
    """Train one job; every way it can end becomes its Outcome, a stop signal included (``interrupted``, with
    the signal's exit code), so one broken point never costs the rest of the sweep."""
    run_dir = job.run_dir
    try:
        results = fit(job.cfg, run_dir, resume=job.ckpt, command=command, progress=progress, dist=dist,
                      stopper=stopper)
        return Outcome(job.point, results["status"], run_dir.path, results)  # completed, stopped_early or pruned
    except (KeyboardInterrupt, Exception) as e:  # noqa: BLE001 - one broken point must not cost the rest
        ending = ending_of(e)
        recorded = run_dir.results if run_dir.path else {}  # what fit wrote in results.json, if it got that far
        if ending.status == "interrupted":  # fit's own words: where it stopped and how to continue
            ending = Ending("interrupted", recorded.get("error") or "interrupted", exit_code=ending.exit_code)
        elif ending.status == "failed" and ending.traceback is None:  # fit recorded the original error's
            ending = Ending("failed", ending.error, recorded.get("traceback"))
        return Outcome.ended(job.point, ending, run_dir.path)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # an out-of-memory point should not starve the next one


class Sequential:
    """Every job in this process, one after another."""

    def run(self, jobs: list[Job], total: int, manifest: Optional[Manifest] = None,
            command: Optional[str] = None) -> list[Outcome]:
        with GracefulStop(announce=lambda text: log.info(text.strip())) as stop:
            outcomes, durations = [], []
            for n, job in enumerate(jobs, 1):
                if stop.requested:
                    log.info(f"stopped by {signal.Signals(stop.signum).name} before run {job.index + 1}/{total}; "
                             f"{len(jobs) - n + 1} run(s) not started")
                    outcomes.append(Outcome(job.point, "interrupted", None, error="not started: the call was stopped",
                                            exit_code=128 + stop.signum))
                    break
                log.info(f"\n=== run {job.index + 1}/{total}: {job.describe()}")
                started = time.monotonic()
                outcomes.append(run_one(job, command=command))
                durations.append(time.monotonic() - started)
                last = outcomes[-1]
                if last.status == "interrupted":
                    log.info(f"interrupted during run {job.index + 1}/{total} {job.point.name}; "
                             f"{len(jobs) - n} later run(s) not started")
                    break
                if last.status not in FINISHED:
                    log.info(f"run {job.index + 1}/{total} {job.point.name} {last.status}: {last.error}")
                left = eta(durations, len(jobs) - n)
                if left is not None:
                    log.info(f"{n} of {len(jobs)} runs done, ETA {format_duration(left)} for the other {len(jobs) - n}")
            return outcomes

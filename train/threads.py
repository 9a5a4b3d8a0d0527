"""How many CPU threads a run trains with (``train.threads``), and a warning when the machine is too busy for them.

The count is set before the model is built and kept for the whole run: it changes the order of a CPU's sums, so
the numbers. ``auto`` resolves to a number when the run starts; that number is recorded (results.json's
``threads``, last.pt's ``threads``) and a resume uses it (``train.checkpoint.use_threads``).

On a busy machine torch's threads wait for each other at every op: ``python -m bench.threads`` measured one
thread 1.7-5.4x faster than two on a 2-core machine beside one other busy process, and two 1.6x faster than one
with the cores free (BENCHMARKS.md). ``auto`` does not follow the load (two runs of one config would differ
bit-wise); it warns.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch

from core.log import get_logger

log = get_logger(__name__)


def available_cores() -> int:
    """The CPUs this process may run on (``taskset``, a container's cpuset), which torch's default ignores."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_threads(jobs: int = 1, *, cores: Optional[int] = None, default: Optional[int] = None) -> int:
    """``train.threads: auto`` for one of ``jobs`` runs at once: torch's own count in this process (its physical
    cores, or ``OMP_NUM_THREADS``; in a ``--jobs`` worker, the worker's share), at most the cores this process may
    run on, divided by ``jobs``; at least one."""
    cores = available_cores() if cores is None else cores
    default = torch.get_num_threads() if default is None else default
    return max(1, min(default, cores) // max(1, jobs))


def resolve(setting: int | str) -> int:
    """The count a new run trains with: ``train.threads`` itself, or ``auto`` resolved here and now."""
    return auto_threads() if setting == "auto" else int(setting)


def apply(setting: int | str, ckpt: Optional[dict[str, Any]] = None) -> int:
    """Set torch's threads for a run before its model is built: the count ``ckpt`` (a resumed run's last.pt)
    recorded, else ``setting`` resolved. Returns the count in use."""
    from train.checkpoint import use_threads  # noqa: PLC0415 - checkpoint imports the config, this stays light

    if ckpt is not None and isinstance(ckpt.get("threads"), int) and ckpt["threads"] >= 1:
        use_threads(ckpt)
        return torch.get_num_threads()
    count = resolve(setting)
    if count != torch.get_num_threads():
        torch.set_num_threads(count)
    return count


def busy_warning(threads: int, *, cores: Optional[int] = None, load: Optional[float] = None) -> Optional[str]:
    """One line when other work already holds cores this run's ``threads`` need (the 1-minute load average, so
    load that began seconds ago is not seen); None when they fit, or with one thread, which never waits."""
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average here
            return None
    if threads <= 1 or load < 1 or load + threads <= cores:
        return None
    return (f"the machine is busy (load {load:.1f} on {cores} core(s)): {threads} training threads may fight "
            f"other work for them and run several times slower; consider train.threads=1 "
            f"(docs/config.md#threads)")


_warned = False


def warn_if_busy(threads: int) -> None:
    """``busy_warning``, once per process: the next run of a sequential sweep would see the previous one's load."""
    global _warned
    if _warned:
        return
    _warned = True
    line = busy_warning(threads)
    if line:
        log.warning(f"warning: {line}")

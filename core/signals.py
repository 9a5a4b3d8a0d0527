"""Graceful stops: SIGTERM (SLURM preemption, ``kill``, ``docker stop``, ``timeout``), SIGHUP (a dropped
ssh session) and Ctrl-C (SIGINT) ask a run to stop at its next safe point instead of killing it.

The first signal sets ``GracefulStop.signum``; the training loop checks it after every step, writes a
resumable checkpoint and raises ``Interrupted``. A second signal stops at once (``Interrupted`` raised
from the handler), as Lightning and the HF Trainer do, for a user who does not want to wait.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Optional

from core.errors import Interrupted

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_extra: list[int] = []  # more stop signals for this process: a SLURM job's SIGUSR2 (time limit, preemption)
_active: list["GracefulStop"] = []  # entered in the main thread and not yet left, innermost last


def also_stop_on(signum: int) -> None:
    """Make ``signum`` a stop signal too, for every ``GracefulStop`` entered from now on in this process."""
    if signum not in SIGNALS and signum not in _extra:
        _extra.append(signum)


class GracefulStop:
    """A context manager that turns stop signals into a flag (first signal) or ``Interrupted`` (second).

    One entered inside another (a run inside a multi-run call or a tune worker) starts with the signal the
    outer one has already received: a stop that came between the caller's last look and the run's start
    stops the run at its first safe point instead of being forgotten while it trains to the end.

    Outside the main thread (where Python cannot install handlers) it does nothing and the flag stays
    unset, so signals keep their default behaviour.
    """

    def __init__(self, announce=lambda text: print(text, file=sys.stderr, flush=True)):
        self.signum: Optional[int] = None
        self._announce = announce
        self._previous: dict[int, object] = {}
        self._holding = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise ``Interrupted`` if a stop was asked for (for loops with nothing to save first)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def holding(self):
        """No immediate stop inside: for the last writes that record how a run ended."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            if self._holding:
                return
            raise Interrupted(signum, immediate=True)
        self.signum = signum
        self._announce(f"\n{signal.Signals(signum).name} received: stopping after this step with a resumable "
                       f"checkpoint (send it again to stop at once)")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            if self.signum is None:
                self.signum = next((outer.signum for outer in reversed(_active) if outer.signum is not None), None)
            for sig in SIGNALS + tuple(_extra):
                self._previous[sig] = signal.signal(sig, self._handle)
            _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self in _active:
            _active.remove(self)


@contextlib.contextmanager
def stop_at_once():
    """Inside, a stop signal raises ``Interrupted`` at once: for work with nothing to checkpoint, which whoever
    continues simply does again (writing a comparison). Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame) -> None:
        raise Interrupted(signum, immediate=True)

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS + tuple(_extra)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

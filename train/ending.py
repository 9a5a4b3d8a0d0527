"""How a run's attempt ended, decided in one place from what ended it: ``completed``, ``diverged`` (the loss
became nan or inf), ``interrupted`` (a stop signal; exit code 128 + its number) or ``failed`` (the error in one
line; a traceback for errors that are not the user's). ``fit`` records it in results.json; a multi-run call
turns it into the point's outcome (launch/plan.py)."""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Optional

import torch

from core.errors import Interrupted, RunFailed, UserError, one_line
from train.engine import NonFiniteLoss


@dataclass(frozen=True)
class Ending:
    status: str  # completed | stopped_early | diverged | interrupted | failed
    error: Optional[str] = None  # one line
    traceback: Optional[str] = None  # for errors that are not the user's (a bug, out of memory, ...)
    exit_code: Optional[int] = None  # interrupted: the signal's exit code (130 Ctrl-C, 143 SIGTERM)


def ending_of(e: BaseException) -> Ending:
    """The ending ``e`` (raised out of a run) means. Call it inside the ``except`` block: the traceback is
    the one being handled."""
    if isinstance(e, KeyboardInterrupt):
        return Ending("interrupted", f"stopped by {e.signame}" if isinstance(e, Interrupted) else "interrupted",
                      exit_code=e.exit_code if isinstance(e, Interrupted) else 130)
    if isinstance(e, NonFiniteLoss):
        return Ending("diverged", str(e))
    if isinstance(e, (UserError, RunFailed)):
        return Ending("failed", one_line(e))
    error = one_line(e)
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in error:
        error += " (try a lower train.batch_size or train.eval_batch_size)"
    return Ending("failed", error, traceback.format_exc())

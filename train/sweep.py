"""Run several configs or sweep points one after another; a failed point is recorded and the rest go on."""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from config import Point
from data import get_spec
from errors import UserError
from models import MODELS
from models.registry import DATASET_KEYS
from train.engine import NonFiniteLoss
from train.run import fit


@dataclass
class Outcome:
    point: Point
    status: str  # completed | failed | diverged | interrupted
    run_dir: Optional[Path] = None  # None when the point failed before its run directory existed
    results: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  # one line
    traceback: Optional[str] = None  # for errors that are not the user's (a bug, out of memory, ...)


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


def run_points(points: list[Point], *, log=print) -> list[Outcome]:
    outcomes = []
    for i, point in enumerate(points, 1):
        swept = ", ".join(f"{k}={v}" for k, v in point.values.items())
        log(f"\n=== run {i}/{len(points)}: {point.name}{f' ({swept})' if swept else ''} [{point.source}]")
        run_dir: list[Path] = []
        try:
            path, results = fit(point.cfg, log=log, started=run_dir.append)
            outcomes.append(Outcome(point, "completed", path, results))
        except KeyboardInterrupt:
            outcomes.append(Outcome(point, "interrupted", run_dir[0] if run_dir else None,
                                    error="interrupted by the user; later runs were not started"))
            log(f"interrupted during run {i}/{len(points)} {point.name}")
            break
        except NonFiniteLoss as e:
            outcomes.append(Outcome(point, "diverged", run_dir[0] if run_dir else None, error=str(e)))
        except UserError as e:
            outcomes.append(Outcome(point, "failed", run_dir[0] if run_dir else None, error=str(e)))
        except Exception as e:  # noqa: BLE001 - one broken point must not cost the rest of the sweep
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            outcomes.append(Outcome(point, "failed", run_dir[0] if run_dir else None,
                                    error=f"{type(e).__name__}: {first}", traceback=traceback.format_exc()))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # an out-of-memory point should not starve the next one
        last = outcomes[-1]
        if last.status != "completed":
            log(f"run {i}/{len(points)} {point.name} {last.status}: {last.error}")
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    done = sum(o.status == "completed" for o in outcomes)
    lines = [f"{done} of {len(outcomes)} runs completed"]
    for o in outcomes:
        if o.status == "completed":
            r = o.results
            lines.append(f"  ok      {o.point.name}: best val acc {r['best_val_acc']:.2f}% "
                         f"(epoch {r['best_epoch']}), final {r['final_val_acc']:.2f}% -> {o.run_dir}")
        else:
            lines.append(f"  {o.status:<7} {o.point.name}: {o.error}")
    return "\n".join(lines)

"""Small text helpers shared by the console lines of a run and of a multi-run call."""
from __future__ import annotations

import statistics
from typing import Any, Optional


def format_duration(seconds: float) -> str:
    """``42s``, ``3m12s``, ``2h05m``: as precise as an estimate deserves."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(durations: list[float], remaining: int) -> Optional[float]:
    """Remaining items x the mean time of those done; None when nothing remains or nothing is done yet."""
    return statistics.fmean(durations) * remaining if durations and remaining > 0 else None


def flatten(tree: dict[str, Any], prefix: str = "", keep_empty: bool = False) -> dict[str, Any]:
    """A nested dict as one level of dotted keys: ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``. An empty
    section has no keys, so it leaves none; ``keep_empty``: it stays, as ``{}`` at its dotted key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and (value or not keep_empty):
            flat.update(flatten(value, f"{prefix}{key}.", keep_empty))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

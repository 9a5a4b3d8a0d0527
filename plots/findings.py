"""The few sentences at the top of a comparison, generated from its numbers: which experiment is best, what
each step up in size buys and costs, and where seed-to-seed spread makes a difference meaningless.

A difference of means is given ± its standard error, sqrt(s1²/n1 + s2²/n2) over the seeds of each, and is
"within noise" when it is smaller than two standard errors (about a 95% interval). With one seed there is
no spread to judge by, and the sentence says so instead.
"""
from __future__ import annotations

import math
from typing import Optional

from plots.runs import Group, short_labels
from plots.table import count

KEY = "best_val_acc"


def difference(a: Group, b: Group, key: str = KEY) -> tuple[float, Optional[float]]:
    """(mean of b − mean of a, its standard error; None when either has a single counted run)."""
    (ma, sa), (mb, sb) = a.stat(key), b.stat(key)
    na, nb = len([r for r in a.counted if r.value(key) is not None]), len([r for r in b.counted
                                                                         if r.value(key) is not None])
    se = math.sqrt(sa ** 2 / na + sb ** 2 / nb) if sa is not None and sb is not None else None
    return mb - ma, se


def verdict(diff: float, se: Optional[float]) -> str:
    if se is None:
        return f"{diff:+.2f} points (one seed: no noise estimate)"
    text = f"{diff:+.2f} ± {se:.2f} points"
    if abs(diff) < 2 * se:
        return text + ", within noise"
    return text + f", beyond noise ({abs(diff) / se:.1f} standard errors)" if se > 0 else text


def size(g: Group) -> float:
    """What "bigger" means when ordering experiments: training FLOPs per image, else parameters."""
    r = g.first.results
    return float(r.get("flops_training") or r.get("params") or 0)


def _ratio(a: Optional[float], b: Optional[float], what: str) -> Optional[str]:
    if not a or not b or a <= 0 or b <= 0:
        return None
    return f"{b / a:.2f}× {what}"


def _latency(g: Group) -> Optional[float]:
    lat = g.latency.get("batch1") or {}
    return None if lat.get("flagged") else lat.get("ms")


def findings(groups: list[Group]) -> list[str]:
    """Markdown bullet lines (without the bullet), most important first."""
    ranked = [g for g in groups if g.stat(KEY)[0] is not None]
    if not ranked:
        return ["No run has a validation accuracy yet."]
    short = short_labels(groups)
    lines = []
    for dataset in dict.fromkeys(g.first.dataset for g in ranked):
        mine = [g for g in ranked if g.first.dataset == dataset]
        best = max(mine, key=lambda g: g.stat(KEY)[0])
        mean, std = best.stat(KEY)
        seeds = len(best.counted)
        line = (f"Best on {dataset}: **{short[best.label]}**, {mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
                + f"% best val accuracy ({seeds} seed{'s' * (seeds != 1)}), {count(best.first.results.get('params'))} "
                f"params, {count(best.first.results.get('flops_training'))} training FLOPs per image")
        rest = [g for g in mine if g is not best]
        if rest:
            second = max(rest, key=lambda g: g.stat(KEY)[0])
            diff, se = difference(second, best)
            line += f"; ahead of {short[second.label]} by {verdict(diff, se)}"
        lines.append(line + ".")
        by_size = sorted(mine, key=size)
        for a, b in zip(by_size, by_size[1:]):
            if size(a) == size(b):
                continue
            diff, se = difference(a, b)
            costs = [c for c in (
                _ratio(size(a), size(b), "training FLOPs" if a.first.results.get("flops_training") else "params"),
                _ratio(a.first.results.get("params"), b.first.results.get("params"), "params")
                if a.first.results.get("flops_training") else None,
                _ratio(a.stat("time_per_epoch_s")[0], b.stat("time_per_epoch_s")[0], "time per epoch"),
                _ratio(_latency(a), _latency(b), "latency")) if c]
            lines.append(f"{short[b.label]} vs {short[a.label]}: {verdict(diff, se)}"
                         + (f", for {', '.join(costs)}" if costs else "") + ".")
    if all(len(g.counted) < 2 for g in ranked):
        lines.append("One seed per experiment: differences cannot be told from seed-to-seed noise; sweep "
                     "`seed: [0, 1, 2]` to get error bars.")
    unsteady = [f"{short[g.label]} (±{100 * g.latency['batch1']['spread']:.0f}%)" for g in groups
                if (g.latency.get("batch1") or {}).get("flagged")]
    if unsteady:
        lines.append(f"Latency too unsteady to compare for {', '.join(unsteady)}: the machine was busy; measure "
                     "again on a quiet one.")
    left_out = [r for g in groups for r in g.runs if r not in g.counted]
    if left_out:
        what = ", ".join(f"{r.name} ({r.status})" for r in left_out)
        lines.append(f"Not in the means: {what}.")
    return lines

"""The few sentences at the top of a comparison, generated from its numbers: which experiment is best, what
each step up in size buys and costs, and where seed-to-seed spread makes a difference meaningless.

A difference of means is given ± its standard error, sqrt(s1²/n1 + s2²/n2) over the seeds of each. It is
"within noise" when it lies inside the 95% interval of Welch's t-test: under t·se, with t the 97.5%
quantile of Student's t at Welch-Satterthwaite's degrees of freedom (about 4.3 for two runs a side at
equal spread, 2.8 for three: few seeds make a wide interval). With one seed there is no spread to judge
by, and the sentence says so instead. Only experiments with a completed run are ranked.

Time per epoch gets the same test, on its logarithm (a ratio is what the sentence gives): the samples are the
runs' own times per epoch over seeds, or, with one run a side, the epochs of those runs (a spread that misses
load changing between runs, and the sentence says so). A ratio inside the noise is called so: on a busy
machine a bigger model can train "faster".
"""
from __future__ import annotations

import math
import statistics
from typing import Optional

from plots.runs import SETTINGS, Group, short_labels, size_measure, unmarked
from plots.table import count, param, params_text, ratio_why

KEY = "best_val_acc"

def t975(df: float) -> float:
    """Student's t 97.5% quantile at ``df`` degrees of freedom (not necessarily whole: Welch's are not), from
    its density integrated by Simpson's rule and inverted by bisection; accurate to about 1e-4, which is
    plenty for a verdict, without needing scipy. Welch's df is at least 1 for two runs a side."""
    df = max(df, 1.0)
    if df > 1e5:
        return 1.959964
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 400) -> float:
        h = x / n
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 1.9, 13.0  # the quantile lies between the normal's and the Cauchy's (df 1): 1.96 .. 12.71
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < 0.975 else (lo, mid)
    return (lo + hi) / 2


def difference(a: Group, b: Group, key: str = KEY) -> tuple[float, Optional[float], Optional[float]]:
    """(mean of b − mean of a, its standard error, Welch's degrees of freedom); the last two None when
    either side has a single value."""
    va, vb = a.values(key), b.values(key)
    diff = sum(vb) / len(vb) - sum(va) / len(va)
    if len(va) < 2 or len(vb) < 2:
        return diff, None, None
    ea, eb = a.stat(key)[1] ** 2 / len(va), b.stat(key)[1] ** 2 / len(vb)
    se = math.sqrt(ea + eb)
    df = (ea + eb) ** 2 / (ea ** 2 / (len(va) - 1) + eb ** 2 / (len(vb) - 1)) if ea + eb > 0 else math.inf
    return diff, se, df


def verdict(diff: float, se: Optional[float], df: Optional[float]) -> str:
    if se is None:
        return f"{diff:+.2f} points (one seed: no noise estimate)"
    text = f"{diff:+.2f} ± {se:.2f} points"
    if abs(diff) <= t975(df) * se:
        return text + ", within noise"
    return text + f", beyond noise ({abs(diff) / se:.1f} standard errors)" if se > 0 else text


def _ratio(a: Optional[float], b: Optional[float], what: str) -> Optional[str]:
    if not a or not b or a <= 0 or b <= 0:
        return None
    return f"{b / a:.2f}× {what}"


def _epoch_times(g: Group) -> list[float]:
    return [t for r in g.counted for t in r.series("epoch_time_s") if math.isfinite(t) and t > 0]


def time_ratio(a: Group, b: Group, key: str = "time_per_epoch_s") -> Optional[str]:
    """``1.05× time per epoch (± 0.03 over 3 seeds, within noise)``: b's mean time per epoch over a's, with the
    standard error of the ratio (delta method: the ratio × √(cv₁²/n₁ + cv₂²/n₂)) and Welch's verdict on its
    logarithm. Over seeds when both sides have two runs, else over the epochs of their runs."""
    va, vb, over = a.values(key), b.values(key), "seeds"
    if len(va) < 2 or len(vb) < 2:
        va, vb, over = _epoch_times(a) or va, _epoch_times(b) or vb, "epochs, one run a side"
    va, vb = [v for v in va if v > 0], [v for v in vb if v > 0]
    if not va or not vb:
        return None
    ma, mb = sum(va) / len(va), sum(vb) / len(vb)
    ratio = mb / ma
    if len(va) < 2 or len(vb) < 2:
        return f"{ratio:.2f}× time per epoch (one epoch: no noise estimate)"
    ea = statistics.variance(va) / ma ** 2 / len(va)  # the variance of log(mean) for each side
    eb = statistics.variance(vb) / mb ** 2 / len(vb)
    se = math.sqrt(ea + eb)
    df = (ea + eb) ** 2 / (ea ** 2 / (len(va) - 1) + eb ** 2 / (len(vb) - 1)) if se > 0 else math.inf
    n = f"{min(len(va), len(vb))}" if len(va) == len(vb) else f"{len(va)} and {len(vb)}"
    noise = "within noise" if abs(math.log(ratio)) <= t975(df) * se else "beyond noise"
    return f"{ratio:.2f}× time per epoch (± {ratio * se:.2f} over {n} {over}, {noise})"


def _latency(g: Group) -> Optional[tuple[float, str]]:
    """Batch-1 latency as a multiple of the fastest model's, timed in the same rounds: steadier than
    milliseconds on a busy machine (models.measure.Latency.ratio), with the model it is a multiple of; None
    when its interval is too wide to rank by."""
    lat = g.latency.get("batch1") or {}
    return None if lat.get("ratio_flagged", True) or lat.get("ratio") is None else \
        (lat["ratio"], str(lat.get("reference", "")))


def _latency_ratio(a: Group, b: Group) -> Optional[str]:
    """b's latency over a's, from their ratios to one reference (ratios to two references do not divide)."""
    la, lb = _latency(a), _latency(b)
    if la is None or lb is None or la[1] != lb[1]:
        return None
    return _ratio(la[0], lb[0], "latency")


def _steps(groups: list[Group], size) -> list[tuple[Group, Group]]:
    """Pairs (smaller, next larger) that differ along one swept key only, so the difference is that key's:
    for each key, the groups alike in every other swept key, in order of size. Runs of no sweep: all of them
    in order of size."""
    # Not along "tuned": a tuned experiment beside its baseline is no step in size (``_tuning`` compares them).
    keys = list(dict.fromkeys(k for g in groups for k in g.swept if k != "tuned"))
    partitions: list[list[Group]] = []
    for key in keys or [None]:
        alike: dict[str, list[Group]] = {}
        for g in groups:
            rest = repr(sorted((k, repr(v)) for k, v in g.swept.items() if k != key))
            alike.setdefault(rest, []).append(g)
        partitions += alike.values()
    pairs: list[tuple[Group, Group]] = []
    for part in partitions:
        ordered = sorted(part, key=size)
        pairs += [(a, b) for a, b in zip(ordered, ordered[1:]) if size(a) != size(b) and (a, b) not in pairs]
    return pairs


def _step_names(a: Group, b: Group, short: dict[str, str]) -> str:
    """``b vs a``; for a step between tuned experiments (or between baselines), without the marks both share,
    and which settings the step is at."""
    if a.tuned is not None and a.tuned == b.tuned:
        return f"{unmarked(short[b.label])} vs {unmarked(short[a.label])} {SETTINGS[a.tuned]}"
    return f"{short[b.label]} vs {short[a.label]}"


def _tuning(groups: list[Group], short: dict[str, str]) -> list[str]:
    """Per experiment run both at its search's best setting and at the config's own: what tuning changed,
    judged against seed noise like any other difference."""
    lines = []
    for tuned in (g for g in groups if g.tuned):
        baseline = next((g for g in groups if g.tuned is False and g.experiment == tuned.experiment), None)
        if baseline is None:
            continue
        params = tuned.tuned_params
        keys = list(params)
        best = (param(params[keys[0]]) if len(keys) == 1 else params_text(params)) if keys else "not recorded"
        what = (", ".join(keys[:-1]) + " and " + keys[-1] if len(keys) > 1 else keys[0]) if keys else "its settings"
        lines.append(f"Tuning {what} (best {best}) changed {unmarked(short[tuned.label])}'s best val acc by "
                     f"{verdict(*difference(baseline, tuned))}.")
    return lines


def findings(groups: list[Group]) -> list[str]:
    """Markdown bullet lines (without the bullet), most important first."""
    ranked = [g for g in groups if g.completed and g.values(KEY)]
    short = short_labels(groups)
    lines = []
    if not ranked:
        lines.append("No experiment has a completed run with a validation accuracy yet: nothing to rank.")
    for dataset in dict.fromkeys(g.first.dataset for g in ranked):
        mine = [g for g in ranked if g.first.dataset == dataset]
        measure = size_measure(mine)

        def size(g: Group) -> float:  # what "bigger" means: training FLOPs per image, else parameters
            return g.cost(measure) or 0.0
        best = max(mine, key=lambda g: g.stat(KEY)[0])
        mean, std = best.stat(KEY)
        seeds = len(best.values(KEY))
        line = (f"Best on {dataset}: **{short[best.label]}**, {mean:.2f}"
                + (f" ± {std:.2f}" if std is not None else "")
                + f"% best val accuracy ({seeds} seed{'s' * (seeds != 1)}), {count(best.cost('params'))} params, "
                f"{count(best.cost('flops_training'))} training FLOPs per image")
        rest = [g for g in mine if g is not best]
        if rest:
            second = max(rest, key=lambda g: g.stat(KEY)[0])
            line += f"; ahead of {short[second.label]} by {verdict(*difference(second, best))}"
        lines.append(line + ".")
        for a, b in _steps(mine, size):
            costs = [c for c in (
                _ratio(size(a), size(b), "training FLOPs" if measure == "flops_training" else "params"),
                _ratio(a.cost("params"), b.cost("params"), "params") if measure == "flops_training" else None,
                time_ratio(a, b), _latency_ratio(a, b)) if c]
            lines.append(f"{_step_names(a, b, short)}: {verdict(*difference(a, b))}"
                         + (f", for {', '.join(costs)}" if costs else "") + ".")
        lines += _tuning(mine, short)
    if ranked and all(len(g.values(KEY)) < 2 for g in ranked):
        lines.append("One seed per experiment: differences cannot be told from seed-to-seed noise; sweep "
                     "`seed: [0, 1, 2]` to get error bars.")
    unranked = [f"{short[g.label]} ({', '.join(sorted({r.status for r in g.runs}))})" for g in groups
                if not g.completed]
    if unranked:
        lines.append(f"No completed run, so not ranked (their numbers are from stopped runs): {', '.join(unranked)}.")
    timed = [g for g in groups if g.latency.get("batch1")]
    unsteady = [g for g in timed if g.latency["batch1"].get("flagged")]
    unranked_latency = [f"{short[g.label]} ({ratio_why(g.latency['batch1'])})" for g in timed
                        if g.latency["batch1"].get("ratio_flagged")]
    if unsteady:
        worst = max(g.latency["batch1"]["spread"] for g in unsteady)
        lines.append(f"Latency in milliseconds was unsteady on this machine for {len(unsteady)} of {len(timed)} "
                     f"models (spread up to {100 * worst:.0f}%): the latencies compared above are ratios to the "
                     "fastest model, timed in the same rounds, which such noise hits alike.")
    if unranked_latency:
        lines.append(f"Latency left out of the comparison for {', '.join(unranked_latency)}: its ratio to the "
                     "fastest model has too few rounds, or too wide a 95% interval, to rank by; measure again "
                     "with a larger --latency-budget, or on a quieter machine.")
    left_out = [r for g in groups if g.completed for r in g.runs if r not in g.counted]
    if left_out:
        what = ", ".join(f"{r.name} ({r.status})" for r in left_out)
        lines.append(f"Not in the means: {what}.")
    return lines

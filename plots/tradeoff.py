"""What size buys: accuracy against each swept value, and against parameters, training FLOPs, time per
epoch and inference latency, with the Pareto front marked.

Every number drawn is also written to ``tradeoffs.csv`` (one row per point of every panel), so a script, or
a test, can read what a figure shows without reading pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from matplotlib.ticker import EngFormatter

from plots.curves import plt, save
from plots.runs import Group, short_labels, size_measure, swept_text
from plots.table import cell, csv_text

# (results key, axis label) of the costs accuracy is drawn against; latency is the comparison's measurement.
COSTS = [("params", "parameters"), ("flops_training", "training FLOPs per image (forward + backward)"),
         ("time_per_epoch_s", "time per epoch (s)"), ("latency_batch1", "inference latency at batch 1, × the fastest")]
LABEL_CHARS = 28  # a point's label is cut to this many characters
ACCURACY = [("best_val_acc", "best val accuracy (%)"), ("final_val_acc", "final val accuracy (%)")]


@dataclass
class Point:
    """One experiment in one panel: x with its spread (error bar ends), y as mean ± std over seeds."""

    label: str  # the experiment
    text: str  # what the figure writes beside it (the label without the part all labels share)
    x: float
    x_lo: float
    x_hi: float
    y: float
    y_std: Optional[float]
    seeds: int
    flagged: bool = False  # drawn hollow and kept off the front: an unsteady latency, or no completed run
    note: str = ""  # why it is flagged, written beside its label
    pareto: bool = False


def pareto(points: list[Point]) -> list[Point]:
    """The points no other point beats on both counts (lower or equal cost and higher or equal accuracy,
    better in one), in order of cost; each is marked ``pareto``. Flagged points take no part."""
    front, best = [], -math.inf
    for p in sorted((p for p in points if not p.flagged), key=lambda p: (p.x, -p.y)):
        if p.y > best:
            p.pareto, best = True, p.y
            front.append(p)
    return front


def _cost(g: Group, key: str) -> Optional[tuple[float, float, float, bool]]:
    """(x, low end, high end, flagged) of one cost: mean ± std over seeds for time, for latency the ratio to
    the fastest model with its 95% interval, the plain count for the rest."""
    if key == "latency_batch1":  # as a multiple of the fastest model's, timed in the same rounds (steadier)
        lat = g.latency.get("batch1")
        if not lat or lat.get("ratio") is None:
            return None
        return lat["ratio"], lat["ratio"] - lat["ratio_ci"], lat["ratio"] + lat["ratio_ci"], bool(lat["ratio_flagged"])
    if key == "time_per_epoch_s":
        mean, std = g.stat(key)
        return None if mean is None else (mean, mean - (std or 0.0), mean + (std or 0.0), False)
    value = g.cost(key)
    return None if value is None else (value, value, value, False)


def points(groups: list[Group], cost: str, accuracy: str = "best_val_acc") -> list[Point]:
    short = short_labels(groups)
    out = []
    for g in groups:
        c = _cost(g, cost)
        y, y_std = g.stat(accuracy)
        if c is None or y is None:
            continue
        note = "not completed" if not g.completed else "unsteady" if c[3] else ""
        out.append(Point(g.label, short[g.label], c[0], c[1], c[2], y, y_std, len(g.counted), bool(note), note))
    pareto(out)
    return out


def _latency_title(groups: list[Group]) -> str:
    """The latency axis names the model its ratios are to, and that model's milliseconds: "the fastest" only
    when it is, among the models shown (latency.json may come from a comparison of other models, and on a
    cyclic busy machine a model may beat the reference in most rounds)."""
    timed = [g for g in groups if (g.latency.get("batch1") or {}).get("ratio") is not None]
    refs = list(dict.fromkeys(str(g.latency["batch1"].get("reference")) for g in timed))
    if len(refs) != 1:
        return "inference latency at batch 1, × the fastest" + (" of its own measurement" if refs else "")
    ref, short = refs[0], short_labels(groups)
    shown = next((g for g in groups if g.label == ref), None)
    if shown is None:
        return f"inference latency at batch 1, × that of {ref} (not shown)"
    ms = f"{shown.latency['batch1']['ms']:.2f} ms"
    if min(g.latency["batch1"]["ratio"] for g in timed) >= 1.0:
        return f"inference latency at batch 1, × the fastest ({short[ref]}: {ms})"
    return f"inference latency at batch 1, × {short[ref]}'s ({ms})"


def _scatter(ax, pts: list[Point], colour: dict) -> None:
    for p in pts:
        c = colour[p.label]
        xerr = [[p.x - p.x_lo], [p.x_hi - p.x]] if p.x_hi > p.x_lo else None
        ax.errorbar(p.x, p.y, yerr=p.y_std, xerr=xerr, fmt="o", color=c, ecolor=c, elinewidth=1.2, capsize=3,
                    markersize=7, markerfacecolor="white" if p.flagged else c, zorder=3)
        if p.pareto:
            ax.plot(p.x, p.y, "o", markersize=13, markerfacecolor="none", markeredgecolor="black", zorder=4)
        text = p.text if len(p.text) <= LABEL_CHARS else p.text[:LABEL_CHARS - 1] + "…"  # the axes keep their room
        ax.annotate(text + (f" ({p.note})" if p.note else ""), (p.x, p.y), textcoords="offset points",
                    xytext=(6, 6), fontsize="small", color="#222")
    front = sorted((p for p in pts if p.pareto), key=lambda p: p.x)
    if len(front) > 1:  # the front as a staircase: what the best model at each budget reaches
        xs, ys = [front[0].x], [front[0].y]
        for p in front[1:]:
            xs += [p.x, p.x]
            ys += [ys[-1], p.y]
        ax.plot(xs, ys, color="black", linewidth=1, linestyle=":", zorder=2, label="Pareto front")


def _log_if_wide(ax, pts: list[Point], key: str) -> None:
    xs = [p.x for p in pts if p.x > 0]
    if xs and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    if key in ("params", "flops_training"):  # counts: 420k, 1.5G rather than 420000 and an offset of 1e8
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def tradeoffs(groups: list[Group], colour: dict, path: Path, rows: list[dict[str, Any]]) -> Optional[Path]:
    """Best val accuracy against the four costs, one panel each; ``rows`` gets every point drawn."""
    panels = [(key, title, points(groups, key)) for key, title in COSTS]
    if not any(pts for _, _, pts in panels):
        return None
    datasets = sorted({g.first.dataset for g in groups})
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for ax, (key, title, pts) in zip(axes.flat, panels):
        ax.set_xlabel(_latency_title(groups) if key == "latency_batch1" else title)
        ax.set_ylabel("best val accuracy (%)")
        ax.grid(True, alpha=0.3)
        if not pts:
            why = "not measured: python -m plots ... (without --no-latency)" if key.startswith("latency") else \
                "not recorded by these runs"
            ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="#666")
            continue
        _scatter(ax, pts, colour)
        _log_if_wide(ax, pts, key)
        ax.margins(x=0.15, y=0.15)
        rows += [{"figure": path.name, "x_name": key, "y_name": "best_val_acc", "experiment": p.label,
                  "x": p.x, "x_lo": p.x_lo, "x_hi": p.x_hi, "y": p.y, "y_std": p.y_std, "seeds": p.seeds,
                  "pareto": p.pareto, "flagged": p.flagged} for p in pts]
    seeds = max(len(g.counted) for g in groups)
    fig.suptitle(f"What accuracy costs on {', '.join(datasets)}: best val accuracy (mean ± std over "
                 f"{seeds} seed{'s' * (seeds != 1)}) against size, compute and time; ringed: the Pareto front",
                 fontsize="medium")
    fig.tight_layout()
    return save(fig, path)


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def swept_figure(groups: list[Group], key: str, colour: dict, path: Path, rows: list[dict[str, Any]]) -> Path:
    """Best and final val accuracy against one swept key, mean ± std over seeds. A numeric key is an axis
    (one line per combination of the other swept keys); a categorical one (model names) is a row of
    categories ordered by size (training FLOPs, else parameters)."""
    having = [g for g in groups if key in g.swept]
    values = [g.swept[key] for g in having]
    numeric = _numeric(values)
    if not numeric:
        measure = size_measure(having)  # the summary's order of sizes too
        order = []
        for g in sorted(having, key=lambda g: g.cost(measure) or 0.0):
            if str(g.swept[key]) not in order:
                order.append(str(g.swept[key]))
        position = {v: i for i, v in enumerate(order)}
    series: dict[str, list[Group]] = {}
    for g in having:
        rest = ", ".join(swept_text(k, v) for k, v in g.swept.items() if k != key)
        series.setdefault(rest, []).append(g)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, (acc, title) in zip(axes, ACCURACY):
        for rest, members in series.items():
            x_of = (lambda g: float(g.swept[key])) if numeric else (lambda g: position[str(g.swept[key])])
            members = sorted(members, key=x_of)
            xs = [x_of(g) for g in members]
            stats = [g.stat(acc) for g in members]
            ys = [m if m is not None else math.nan for m, _ in stats]
            line = colour[members[0].label] if len(series) > 1 else "#444"
            ax.plot(xs, ys, color=line, linewidth=1, alpha=0.6, label=rest or None)
            for g, x, y, (_, std) in zip(members, xs, ys, stats):
                ax.errorbar(x, y, yerr=std, fmt="o", color=colour[g.label], capsize=4, markersize=7, zorder=3,
                            markerfacecolor=colour[g.label] if g.completed else "white")  # hollow: not completed
                rows.append({"figure": path.name, "x_name": key, "y_name": acc, "experiment": g.label,
                             "x": cell(g.swept[key]), "y": y, "y_std": std, "seeds": len(g.counted)})
        ax.set_title(title)
        ax.set_xlabel(key)
        ax.grid(True, alpha=0.3)
        if numeric and min(map(float, values)) > 0 and max(map(float, values)) / min(map(float, values)) > 20:
            ax.set_xscale("log")  # e.g. a learning-rate sweep
        if numeric and all(isinstance(v, int) for v in values) and len(set(values)) <= 12:
            ax.set_xticks(sorted(set(values)))  # depths, widths: the swept values, not 1.5 layers
        if not numeric:
            crowded = len(order) > 4
            ax.set_xticks(range(len(order)), order, rotation=20 if crowded else 0, ha="right" if crowded else "center")
            ax.set_xlim(-0.5, len(order) - 0.5)
        if len(series) > 1:
            ax.legend(fontsize="small", title="other swept keys", title_fontsize="small")
        ax.tick_params(labelleft=True)
    axes[0].set_ylabel("val accuracy (%)")
    seeds = max(len(g.counted) for g in having)
    order_note = "" if numeric else ", ordered by size (ties in sweep order)"
    fig.suptitle(f"Val accuracy against {key}{order_note} on {', '.join(sorted({g.first.dataset for g in having}))} "
                 f"(mean ± std over {seeds} seed{'s' * (seeds != 1)})",
                 fontsize="medium")
    fig.tight_layout()
    return save(fig, path)


def swept_numeric(groups: list[Group], key: str) -> bool:
    return _numeric([g.swept[key] for g in groups if key in g.swept])


def rows_csv(rows: list[dict[str, Any]]) -> str:
    columns = ["figure", "x_name", "y_name", "experiment", "x", "x_lo", "x_hi", "y", "y_std", "seeds", "pareto",
               "flagged"]
    return csv_text(rows, columns)

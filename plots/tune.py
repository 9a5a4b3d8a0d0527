"""The tuning section of a comparison: what a ``tune:`` search tried per experiment and what it found, read from
``tune.json`` in the comparison directory (written by launch/tune.py beside the study database).

``read`` checks the file as strictly as a run's files (plots/runs.py): one that is unreadable, not UTF-8, lacks
a key or has the wrong type somewhere is a ``UserError`` naming the file and the field, which the page reports
as one warning, rendering without the section. The figure draws every trial: x the value it tried of one
searched key, y its best validation accuracy; ``figure`` also hands back what it drew (``Marker``), so a test
reads the figure without reading pixels.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from matplotlib.lines import Line2D

from core.errors import UserError
from plots.curves import PALETTE, colour_slot, plt, save
from plots.page import Figure, Section, Table, write
from plots.runs import Group, file_text, is_number, split_prefix, wrong_type
from plots.table import csv_text, param

TUNE_FILE = "tune.json"
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")  # optuna's TrialState names a trial can end (or be) in
KINDS = {"log_uniform": "log-uniform", "uniform": "uniform", "int": "integer", "log_int": "log-integer",
         "choice": "one of"}
METRICS = {"best_val_acc": "best val acc (%)", "final_val_acc": "final val acc (%)"}


@dataclass
class Dimension:
    """One searched key and its distribution: a range ``[low, high]`` or, for ``choice``, the values."""

    key: str
    kind: str
    args: list

    @property
    def log(self) -> bool:
        return self.kind in ("log_uniform", "log_int")

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(param, self.args))
        return f"{KINDS[self.kind]} in [{param(self.args[0])}, {param(self.args[1])}]"

    def position(self, value: Any) -> float:
        """Where a value sits on the panel's x axis: itself, or a choice's index."""
        if self.kind == "choice":
            return float([json.dumps(v) for v in self.args].index(json.dumps(value)))
        return float(value)


@dataclass
class Trial:
    number: int
    state: str
    value: Optional[float]  # its best validation accuracy so far (pruned: before it was stopped)
    params: dict[str, Any]
    epochs: Optional[int]  # epochs it actually ran
    run_dir: Optional[str] = None
    error: Optional[str] = None


@dataclass
class Experiment:
    name: str  # the sweep's experiment (a point without its seed)
    study: str
    epochs_per_trial: Optional[int]
    best: Optional[Trial]  # None: no completed trial
    trials: list[Trial]
    counts: dict[str, int]  # complete, pruned, failed, running
    epochs_run: int
    epochs_saved: int  # over the pruned trials: epochs_per_trial - epochs


@dataclass
class Tuning:
    metric: str
    direction: str
    storage: Optional[str]
    space: list[Dimension]
    budget: dict[str, Optional[float]]  # trials, epochs, minutes; None: no limit
    pruner: Optional[str]
    experiments: list[Experiment]


# ----------------------------------------------------------------------------- reading tune.json


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2 ** 63


def _number(v: Any) -> bool:
    return v is not None and is_number(v) and math.isfinite(v)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, bool)) or _number(v)


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


class _Reader:
    """Fields of one JSON object, each checked; errors name the file and the path to the field."""

    def __init__(self, where: str, obj: Any):
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a mapping of names to values, got {type(obj).__name__}")
        self.where, self.obj = where, obj

    def get(self, key: str, check: Callable[[Any], bool], expected: str, optional: bool = False) -> Any:
        if key not in self.obj:
            if optional:
                return None
            raise UserError(f"{self.where}: {key}: missing (expected {expected})")
        if not check(self.obj[key]):
            raise wrong_type(self.where, key, self.obj[key], expected)
        return self.obj[key]

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if ": " in self.where else f"{self.where}: {key}"


def _dimension(where: str, key: str, spec: Any) -> Dimension:
    r = _Reader(f"{where}.{key}" if ": " in where else f"{where}: {key}", spec)
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise UserError(f"{r.where}: expected one of {', '.join(KINDS)} with its values, got {sorted(spec)}")
    kind = next(iter(spec))
    if kind == "choice":
        args = r.get(kind, lambda v: isinstance(v, list) and v and all(map(_scalar, v)), "a non-empty list of values")
        return Dimension(key, kind, list(args))
    whole = kind.endswith("int")
    check = _int if whole else _number
    args = r.get(kind, lambda v: isinstance(v, list) and len(v) == 2 and all(map(check, v)),
                 f"[low, high], two {'integers' if whole else 'numbers'}")
    if args[0] > args[1] or (kind.startswith("log") and args[0] <= 0):
        raise UserError(f"{r.where}: {kind}: got {args}; needs low <= high" + (", low > 0" * kind.startswith("log")))
    return Dimension(key, kind, list(args))


def _params(r: _Reader, space: dict[str, Dimension]) -> dict[str, Any]:
    params = r.get("params", lambda v: isinstance(v, dict), "a mapping of searched keys to values")
    for key, value in params.items():
        dim = space.get(key)
        if dim is None:
            raise UserError(f"{r.at('params')}: {key!r} is not a searched key (space: {', '.join(space)})")
        valid = (json.dumps(value) in map(json.dumps, dim.args) if dim.kind == "choice"
                 else _number(value) and not isinstance(value, bool) and (value > 0 or not dim.log))
        if not valid:
            raise wrong_type(r.at("params"), key, value, dim.describe())
    return dict(params)


def _trial(where: str, obj: Any, space: dict[str, Dimension]) -> Trial:
    r = _Reader(where, obj)
    state = r.get("state", lambda v: v in STATES, f"one of {', '.join(STATES)}")
    value = r.get("value", _or_null(_number), "a number or null")
    if value is None and state == "COMPLETE":
        raise wrong_type(where, "value", value, "a number (the trial is COMPLETE)")
    return Trial(r.get("number", _int, "an integer"), state, None if value is None else float(value),
                 _params(r, space), r.get("epochs", _or_null(_int), "an integer or null"),
                 r.get("run_dir", _or_null(_str), "a path or null", optional=True),
                 r.get("error", _or_null(_str), "a message or null", optional=True))


def _best(where: str, obj: Any, space: dict[str, Dimension]) -> Trial:
    r = _Reader(where, obj)
    return Trial(r.get("number", _int, "an integer"), "COMPLETE", float(r.get("value", _number, "a number")),
                 _params(r, space), None, r.get("run_dir", _or_null(_str), "a path or null", optional=True))


def _experiment(where: str, obj: Any, space: dict[str, Dimension]) -> Experiment:
    r = _Reader(where, obj)
    best = r.get("best", lambda v: v is None or isinstance(v, dict), "a trial (number, value, params) or null")
    trials = r.get("trials", lambda v: isinstance(v, list), "a list of trials")
    counts = _Reader(r.at("counts"), r.get("counts", lambda v: isinstance(v, dict), "a mapping of counts"))
    return Experiment(
        r.get("name", _str, "a string"), r.get("study", _str, "a string"),
        r.get("epochs_per_trial", _or_null(_int), "an integer or null"),
        None if best is None else _best(r.at("best"), best, space),
        [_trial(r.at(f"trials[{i}]"), t, space) for i, t in enumerate(trials)],
        {k: counts.get(k, lambda v: _int(v) and v >= 0, "a count")
         for k in ("complete", "pruned", "failed", "running")},
        r.get("epochs_run", _int, "an integer"), r.get("epochs_saved", _int, "an integer"))


def read(out: Path) -> Optional[Tuning]:
    """``out/tune.json``, checked; None when there is none (a comparison of no search)."""
    path = Path(out) / TUNE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(file_text(path))
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"{path}: cannot read ({str(e)[:200]})") from None
    r = _Reader(str(path), raw)
    space_raw = r.get("space", lambda v: isinstance(v, dict) and v, "a mapping of searched keys to distributions")
    space = {k: _dimension(r.at("space"), k, v) for k, v in space_raw.items()}
    budget = _Reader(r.at("budget"), r.get("budget", lambda v: isinstance(v, dict), "a mapping (trials, epochs, "
                                                                                     "minutes)"))
    experiments = r.get("experiments", lambda v: isinstance(v, list), "a list of experiments")
    return Tuning(
        r.get("metric", _str, "a string"), r.get("direction", lambda v: v in ("maximize", "minimize"),
                                                 "maximize or minimize"),
        r.get("storage", _or_null(_str), "a string or null", optional=True), list(space.values()),
        {k: budget.get(k, _or_null(lambda v: _number(v) and not isinstance(v, bool) and v > 0),
                       "a positive number or null") for k in ("trials", "epochs", "minutes")},
        r.get("pruner", _or_null(_str), "a string or null"),
        [_experiment(r.at(f"experiments[{i}]"), e, space) for i, e in enumerate(experiments)])


# ----------------------------------------------------------------------------- the figure


@dataclass
class Marker:
    """One trial in one panel, as drawn."""

    experiment: str
    trial: int
    key: str  # the panel's searched key
    value: Any  # the trial's value of that key
    x: float  # where it was drawn (a choice's index, offset per experiment)
    y: float
    state: str
    marker: str  # matplotlib's: "o" a trial, "x" a failed one (drawn at the panel's foot)
    face: Any  # "none" (hollow) or the RGBA it was filled with, read back from the drawn artist
    best: bool  # the experiment's best trial, starred


def experiment_colours(tuning: Tuning, groups: list[Group], colour: dict[str, tuple]) -> dict[str, tuple]:
    """Each searched experiment in the colour of its tuned group on the rest of the page, else a colour of its
    own from its name (plots/curves.py ``colour_slot``), stable across comparisons."""
    out = {}
    for e in tuning.experiments:
        tuned = next((g for g in groups if g.tuned and (g.experiment == e.name or _study(g) == e.study)), None)
        out[e.name] = colour[tuned.label] if tuned is not None and tuned.label in colour else \
            PALETTE[colour_slot(e.name)]
    return out


def _study(g: Group) -> Optional[str]:
    return next((r.results["tuned"].get("study") for r in g.runs if isinstance(r.results.get("tuned"), dict)), None)


def _face(collection) -> Any:
    faces = collection.get_facecolors()
    return "none" if len(faces) == 0 or faces[0][3] == 0 else tuple(float(c) for c in faces[0])


def figure(tuning: Tuning, colours: dict[str, tuple], path: Path, drawn: Optional[list[Marker]] = None
           ) -> Optional[Path]:
    """One panel per searched key: every trial at the value it tried (log axis for a log distribution, the
    choices in order for a choice) against its best validation accuracy; filled: completed, hollow: pruned,
    x at the foot: failed; a star on each experiment's best. None when no trial has a value to draw."""
    drawn = [] if drawn is None else drawn
    dims, experiments = tuning.space, tuning.experiments
    values = [t.value for e in experiments for t in e.trials
              if t.value is not None and t.state in ("COMPLETE", "PRUNED")]
    if not values or not dims:
        return None
    lo, hi = min(values), max(values)
    span = max(hi - lo, 1.0)
    foot = lo - 0.09 * span  # where failed trials sit: under every value
    cols = min(3, len(dims))
    rows = math.ceil(len(dims) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    names = dict(zip((e.name for e in experiments), split_prefix([e.name for e in experiments])[1]))
    for ax, dim in zip(axes.flat, dims):
        for i, e in enumerate(experiments):
            c = colours[e.name]
            # Choices: the experiments side by side around each choice, so they do not hide one another.
            shift = (i - (len(experiments) - 1) / 2) * min(0.12, 0.5 / len(experiments)) if dim.kind == "choice" else 0
            for t in e.trials:
                if dim.key not in t.params:
                    continue
                x = dim.position(t.params[dim.key]) + shift
                best = e.best is not None and t.number == e.best.number
                if t.state == "FAIL":
                    y, kind = foot, "x"
                    drawn_as = ax.scatter([x], [y], marker="x", s=24, color=c, linewidths=1.2, zorder=3)
                elif t.value is None or t.state == "RUNNING":
                    continue  # not over yet, or stopped before its first evaluation: nothing to place
                else:
                    y, kind = t.value, "o"
                    drawn_as = ax.scatter([x], [y], s=34, facecolors=c if t.state == "COMPLETE" else "none",
                                          edgecolors=[c], linewidths=1.3, zorder=3)
                if best:
                    ax.scatter([x], [y], marker="*", s=190, facecolors=[c], edgecolors="black", linewidths=0.7,
                               zorder=4)
                drawn.append(Marker(e.name, t.number, dim.key, t.params[dim.key], x, y, t.state, kind,
                                    _face(drawn_as), best))
        if dim.log:
            ax.set_xscale("log")
        if dim.kind == "choice":
            ax.set_xticks(range(len(dim.args)), [param(v) for v in dim.args])
            ax.set_xlim(-0.5, len(dim.args) - 0.5)
        elif dim.kind == "int":
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(foot - 0.06 * span, hi + 0.08 * span)
        ax.set_title(dim.key)
        ax.set_xlabel(dim.describe())
        ax.set_ylabel(METRICS.get(tuning.metric, tuning.metric))
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(dims):]:
        ax.set_visible(False)
    fig.suptitle("Tuning: validation accuracy against the searched value")
    fig.tight_layout()
    # Two rows under the panels: the experiments' colours, then what a marker's shape and fill say.
    named = [Line2D([], [], color=colours[e.name], marker="o", linestyle="", label=names[e.name]) for e in experiments]
    legend = fig.legend(handles=named, loc="upper center", ncol=min(3, len(named)), fontsize="small",
                        bbox_to_anchor=(0.5, 0.0))
    shapes = [Line2D([], [], color="black", marker="o", linestyle="", label="filled: completed"),
              Line2D([], [], color="black", marker="o", markerfacecolor="none", linestyle="", label="hollow: pruned"),
              Line2D([], [], color="black", marker="x", linestyle="", label="x: failed"),
              Line2D([], [], color="white", marker="*", markersize=12, markeredgecolor="black", linestyle="",
                     label="star: the experiment's best trial")]
    # Where the first legend lands, so the second goes under it: its own extent, without drawing the figure
    # (the same box as after fig.canvas.draw(), which cost a whole draw of every panel).
    box = legend.get_window_extent(fig.canvas.get_renderer()).transformed(fig.transFigure.inverted())
    fig.legend(handles=shapes, loc="upper center", ncol=4, fontsize="small", bbox_to_anchor=(0.5, box.y0),
               frameon=False)
    return save(fig, path)


# ----------------------------------------------------------------------------- the section


def trials_csv(tuning: Tuning) -> str:
    keys = [d.key for d in tuning.space]
    rows = [{"experiment": e.name, "study": e.study, "trial": t.number, "state": t.state, "value": t.value,
             "epochs": t.epochs, "best": e.best is not None and e.best.number == t.number,
             **{k: t.params.get(k) for k in keys}, "error": t.error, "run_dir": t.run_dir}
            for e in tuning.experiments for t in e.trials]
    return csv_text(rows, ["experiment", "study", "trial", "state", "value", "epochs", "best", *keys, "error",
                           "run_dir"])


def table(tuning: Tuning) -> Table:
    """A row per experiment: its best values, best metric (trial), trials by outcome, epochs run and saved."""
    dims = tuning.space
    head = (["experiment"] + [f"best {d.key}" for d in dims]
            + [f"{METRICS.get(tuning.metric, tuning.metric)} (trial)", "trials completed / pruned / failed",
               "epochs run (saved by pruning)"])
    rows = []
    for e in tuning.experiments:
        c = e.counts
        rows.append([e.name] + [param(e.best.params[d.key]) if e.best and d.key in e.best.params else "–"
                                for d in dims]
                    + [f"{e.best.value:.2f} (#{e.best.number})" if e.best else "– (none completed)",
                       f"{c['complete']} / {c['pruned']} / {c['failed']}"
                       + (f" (+{c['running']} running)" if c["running"] else ""),
                       f"{e.epochs_run} ({e.epochs_saved} saved)"])
    return Table("tuning-table", head, [False] + [d.kind != "choice" for d in dims] + [True] * 3, rows)


def _budget(budget: dict[str, Optional[float]]) -> str:
    parts = [f"{param(budget[k])} {k}" for k in ("trials", "epochs", "minutes") if budget.get(k) is not None]
    return ", ".join(parts) or "no limit"


def section(tuning: Tuning, groups: list[Group], colour: dict[str, tuple], out: Path) -> Section:
    """The page's "Tuning" section: what was searched and how, the table, the figure; tuning.csv beside it."""
    write(out / "tuning.csv", trials_csv(tuning))
    searched = ", ".join(f"`{d.key}` ({d.describe()})" for d in tuning.space)
    epochs = sorted({e.epochs_per_trial for e in tuning.experiments if e.epochs_per_trial is not None})
    each = (f" A trial trains up to {epochs[0]}{'–' + str(epochs[-1]) if len(epochs) > 1 else ''} epochs."
            if epochs else "")
    finals = any(g.tuned is not None for g in groups)
    intro = (f"Searched per experiment (Optuna): {searched}, to {tuning.direction} {tuning.metric}; pruner: "
             f"{tuning.pruner or 'none'}; budget: {_budget(tuning.budget)}.{each}"
             + (" Each experiment's best setting was then trained over the seeds: \"(tuned)\" in the results above; "
                "\"(untuned)\" is the same experiment at the config's own values." if finals else "")
             + " Every trial: tuning.csv" + (f"; the studies: `{tuning.storage}`." if tuning.storage else "."))
    drawn = figure(tuning, experiment_colours(tuning, groups, colour), out / "tuning.png")
    figures = []
    if drawn is not None:
        running = sum(t.state == "RUNNING" or (t.value is None and t.state == "PRUNED")
                      for e in tuning.experiments for t in e.trials)
        figures.append(Figure("Tuning: validation accuracy against the searched value",
                              "One panel per searched key: each trial's best validation accuracy against the value "
                              "it tried, a colour per experiment; filled: completed, hollow: pruned (its best before "
                              "it was stopped), x at the foot: failed, star: the experiment's best trial."
                              + (f" {running} trial(s) still running or stopped before their first evaluation are "
                                 "not drawn." if running else ""), drawn))
    return Section("Tuning", figures, intro, table=table(tuning))

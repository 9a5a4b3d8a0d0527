"""The ``tune:`` section: which keys to search per experiment, over which distributions, within which budget.

An experiment is one point of a config without its seed (each model size of a ``sweep:``, say); each is tuned
separately, as its own Optuna study (``launch/tune.py``), then its best setting is trained over the ``seed:``
list and compared. Checked here in full before anything runs (no optuna or torch import):

    tune:
      params:
        train.lr: {log_uniform: [1.0e-4, 1.0e-2]}
        model.dropout: {choice: [0.0, 0.1, 0.2]}
      trials: 8                 # per experiment; and/or epochs: (all its trials together), minutes:
      pruner: hyperband         # hyperband | successive_halving | median | none
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from core.errors import UserError

KINDS = {
    "log_uniform": "a float drawn on a log scale between low and high, e.g. {log_uniform: [1.0e-4, 1.0e-2]}",
    "uniform": "a float between low and high, e.g. {uniform: [0.0, 0.3]}",
    "int": "a whole number from low to high, e.g. {int: [2, 8]}",
    "log_int": "a whole number from low to high on a log scale, e.g. {log_int: [16, 256]}",
    "choice": "one of a list of values, e.g. {choice: [0.0, 0.1, 0.2]}",
}
PRUNERS = ("hyperband", "successive_halving", "median", "none")
METRICS = ("best_val_acc", "final_val_acc")
KEYS = ("params", "trials", "epochs", "minutes", "metric", "pruner", "min_epochs", "seed", "sampler_seed",
        "untuned")
# Keys that cannot be searched: each point's name and seed are the comparison's, not the search's.
NOT_SEARCHED = ("name", "seed", "sweep", "tune", "base")
MAX_TRIALS = 10_000


@dataclass(frozen=True)
class Dist:
    """One searched key's distribution: ``kind`` (``KINDS``) with ``low``/``high``, or ``choices``."""

    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple = ()

    @property
    def log(self) -> bool:
        return self.kind.startswith("log_")

    def corners(self) -> list[Any]:
        """Values that together reach every edge of the space: each is checked against the config's schema
        before anything runs (``train.lr: {uniform: [0, 1]}``: 0 is not a learning rate)."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: list(self.choices) if self.kind == "choice" else [self.low, self.high]}


@dataclass(frozen=True)
class TuneSpec:
    params: dict[str, Dist]
    trials: Optional[int] = None  # per experiment; None: only the other budgets bound the search
    epochs: Optional[int] = None  # training epochs of all of an experiment's trials together
    minutes: Optional[float] = None  # wall-clock minutes of an experiment's search; no trial starts after
    metric: str = "best_val_acc"  # the trial's value, maximized
    pruner: str = "hyperband"
    min_epochs: int = 1  # the pruners' minimum resource: no trial is pruned before this many epochs
    seed: Optional[int] = None  # the trials' seed; None: the experiment's first seed
    sampler_seed: int = 0  # TPE's own seed: the same config asks the same first trials
    untuned: bool = False  # also train each experiment at the config's own values, over the same seeds

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = {k: v.to_dict() for k, v in self.params.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "tune") -> "TuneSpec":
        return parse(d, where)

    def budget_text(self) -> str:
        parts = ([f"{self.trials} trials"] if self.trials else []) + \
            ([f"{self.epochs} epochs"] if self.epochs else []) + ([f"{self.minutes:g} minutes"] if self.minutes else [])
        return " or ".join(parts) + " per experiment" + (", whichever ends first" if len(parts) > 1 else "")

    def describe(self) -> str:
        space = ", ".join(f"{k} ~ {describe_dist(d)}" for k, d in self.params.items())
        pruning = "no pruning" if self.pruner == "none" else f"{self.pruner} pruning after epoch {self.min_epochs}"
        return f"search {space}; {self.budget_text()}; maximize {self.metric}; {pruning}"


def describe_dist(d: Dist) -> str:
    if d.kind == "choice":
        return "one of " + ", ".join(map(repr, d.choices))
    return f"{d.kind} [{d.low:g}, {d.high:g}]"


def parse(raw: Any, where: str = "tune") -> TuneSpec:
    """The ``tune:`` section, checked; every mistake is one line naming the key and what would be valid."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping with params: and a budget (trials:, epochs: or minutes:), "
                        f"got {raw!r}")
    unknown = [k for k in raw if k not in KEYS]
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: unknown key; valid keys: {', '.join(KEYS)}")
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{where}.params: expected a mapping of dotted config keys to distributions, e.g. "
                        f"params: {{train.lr: {{log_uniform: [1.0e-4, 1.0e-2]}}}}; got {params!r}")
    dists = {}
    for key, spec in _dotted(params).items():
        if key.split(".")[0] in NOT_SEARCHED:
            raise UserError(f"{where}.params.{key}: cannot be searched (a point's {key.split('.')[0]} is the "
                            f"comparison's); sweep it with sweep: instead")
        dists[key] = _dist(spec, f"{where}.params.{key}")
    trials = _count(raw.get("trials"), f"{where}.trials", MAX_TRIALS)
    epochs = _count(raw.get("epochs"), f"{where}.epochs", 10_000_000)
    minutes = raw.get("minutes")
    if minutes is not None:
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not math.isfinite(minutes) \
                or minutes <= 0 or minutes > 525_600:
            raise UserError(f"{where}.minutes: got {minutes!r}; must be a number of minutes in (0, 525,600], or null")
        minutes = float(minutes)
    if trials is None and epochs is None and minutes is None:
        trials = 20
    metric = raw.get("metric", "best_val_acc")
    if metric not in METRICS:
        raise UserError(f"{where}.metric: got {metric!r}; valid: {', '.join(METRICS)}")
    pruner = raw.get("pruner", "hyperband")
    if pruner is None or pruner is False:
        pruner = "none"
    if pruner not in PRUNERS:
        raise UserError(f"{where}.pruner: got {pruner!r}; valid: {', '.join(PRUNERS)}")
    min_epochs = _count(raw.get("min_epochs", 1), f"{where}.min_epochs", 100_000) or 1
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32):
        raise UserError(f"{where}.seed: got {seed!r}; must be a whole number in [0, 2**32), or null (the "
                        f"experiment's first seed)")
    sampler_seed = raw.get("sampler_seed", 0)
    if isinstance(sampler_seed, bool) or not isinstance(sampler_seed, int) or not 0 <= sampler_seed < 2 ** 32:
        raise UserError(f"{where}.sampler_seed: got {sampler_seed!r}; must be a whole number in [0, 2**32)")
    untuned = raw.get("untuned", False)
    if not isinstance(untuned, bool):
        raise UserError(f"{where}.untuned: got {untuned!r}; must be true or false")
    return TuneSpec(dists, trials, epochs, minutes, metric, pruner, min_epochs, seed, sampler_seed, untuned)


def _dotted(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{train: {lr: {log_uniform: ...}}}`` and ``{train.lr: {log_uniform: ...}}`` alike: a mapping whose one
    key is a distribution's kind is a distribution; any other mapping is a section."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if not isinstance(k, str) or not k:
            raise UserError(f"tune.params: {k!r} is not a config key")
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            out.update(_dotted(v, key + "."))
        else:
            out[key] = v
    return out


def _dist(spec: Any, where: str) -> Dist:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise UserError(f"{where}: got {spec!r}; expected one distribution: {{KIND: [low, high]}} with KIND "
                        f"log_uniform, uniform, int or log_int, or {{choice: [values]}}, e.g. "
                        f"{{log_uniform: [1.0e-4, 1.0e-2]}}")
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: choice: expected a non-empty list of values, got {values!r}")
        for v in values:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise UserError(f"{where}: choice: {v!r} is not a single value (number, string, true/false, null)")
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"{where}: choice: {v!r} is not a finite number")
        if len(set(map(repr, values))) != len(values):
            raise UserError(f"{where}: choice: a value is listed twice in {values!r}")
        return Dist(kind, choices=tuple(values))
    if not isinstance(values, list) or len(values) != 2:
        raise UserError(f"{where}: {kind}: expected [low, high], got {values!r}")
    whole = kind in ("int", "log_int")
    for v in values:
        ok = (isinstance(v, int) if whole else isinstance(v, (int, float))) and not isinstance(v, bool)
        if not ok or (isinstance(v, float) and not math.isfinite(v)):
            raise UserError(f"{where}: {kind}: {v!r} is not a {'whole' if whole else 'finite'} number; "
                            f"expected [low, high], e.g. {KINDS[kind].split('e.g. ')[1]}")
    low, high = values
    if low >= high:
        raise UserError(f"{where}: {kind}: low {low!r} must be below high {high!r}")
    if kind.startswith("log_") and low <= 0:
        raise UserError(f"{where}: {kind}: low {low!r} must be above 0 (a log scale does not reach 0 or below); "
                        f"use uniform for a range through 0")
    return Dist(kind, low if whole else float(low), high if whole else float(high))


def _count(v: Any, where: str, top: int) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
        raise UserError(f"{where}: got {v!r}; must be a whole number in [1, {top:,}], or null")
    return v

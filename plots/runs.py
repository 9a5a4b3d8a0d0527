"""Read run directories (only what ``main.py`` wrote) and group repeats of one experiment over seeds."""
from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from core.convert import short_repr
from core.errors import UserError, one_line
from core.lock import writer_alive
from core.status import FINISHED, PRUNED
from core.text import flatten
from core.yamltext import nesting, problem, safe_load

RUN_FILES = "config.yaml, metrics.jsonl and results.json"

# Keys that do not change what was trained, so runs differing only there are repeats of one experiment.
_NOT_THE_EXPERIMENT = {"name": None, "seed": None, "output": None,
                       "data": ("root", "download", "cache", "cache_dir"), "train": ("log_every", "device")}


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    results: dict[str, Any]
    metrics: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return str(self.results.get("name") or self.config.get("name") or self.path.name)

    @property
    def model(self) -> str:
        return str(self.config.get("model", {}).get("name", "?"))

    @property
    def dataset(self) -> str:
        return str(self.config.get("data", {}).get("name", "?"))

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def swept(self) -> dict[str, Any]:
        """The values its sweep set (results.json ``swept``), seed included; empty for a run of its own."""
        return dict(self.results.get("swept") or {})

    @property
    def reason(self) -> str:
        """Why a run that did not complete stopped (results.json ``error``), or why nobody knows; for a run
        that stopped early, where and why (it counts like a completed one)."""
        if self.status == "completed":
            return ""
        if self.status == "stopped_early":
            return (f"stopped early after epoch {self.results.get('stopped_epoch')} of {self.results.get('epochs')}: "
                    f"{self.results.get('stop_reason') or 'no improvement'}")
        if self.status == "killed":
            return "its process ended without recording why (SIGKILL, out of memory, a power cut)"
        if self.status == PRUNED:
            trial = self.results.get("trial") or {}
            return (f"pruned by the tuning search after epoch {len(self.metrics)} of {self.results.get('epochs')}"
                    + (f" (trial {trial.get('number')} of {trial.get('study')})" if trial else ""))
        return str(self.results.get("error") or "")

    @property
    def finished(self) -> bool:
        """Completed, or stopped early: it ended as its config says, and counts in a comparison."""
        return self.status in FINISHED

    @property
    def status(self) -> str:
        """results.json's status; a ``running`` run whose process is gone (on this host) is ``killed``."""
        status = str(self.results.get("status", "incomplete"))
        if status == "running" and writer_alive(self.path, self.results) is False:
            return "killed"
        return status

    def series(self, key: str) -> list[float]:
        return [float(m[key]) for m in self.metrics if m.get(key) is not None]

    def value(self, key: str) -> Optional[float]:
        """A number from results.json, else derived from metrics.jsonl (runs that stopped early)."""
        if self.results.get(key) is not None:
            return float(self.results[key])
        accs, times = self.series("val_acc"), self.series("epoch_time_s")
        derived = {
            "best_val_acc": max(accs) if accs else None,
            "final_val_acc": accs[-1] if accs else None,
            "time_per_epoch_s": statistics.fmean(times) if times else None,
        }
        return derived.get(key)

    def checkpoint(self) -> Optional[Path]:
        for name in ("best.pt", "last.pt"):
            if (self.path / name).is_file():
                return self.path / name
        return None


# results.json fields the comparison reads as numbers (null: not recorded); metrics.jsonl rows hold only numbers.
NUMBERS = ("params", "mult_adds", "flops_inference", "flops_training", "best_val_acc", "best_epoch",
           "final_val_acc", "final_val_top5", "time_per_epoch_s", "images_per_s")


def file_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None


def is_number(value: Any) -> bool:
    """A JSON number a float can hold, or null."""
    if value is None or isinstance(value, float):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def wrong_type(where: str, key: str, value: Any, expected: str) -> UserError:
    return UserError(f"{where}: {key}: expected {expected}, got {short_repr(value)} ({type(value).__name__})")


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping of names to values, got {type(value).__name__}")
    return value


def _config(path: Path) -> dict[str, Any]:
    try:
        data = safe_load(file_text(path))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: cannot read (malformed YAML: {problem(e)})") from None
    except (ValueError, RecursionError) as e:  # PyYAML's constructors: a date like 2020-13-45, 5,000 digits
        raise UserError(f"{path}: cannot read ({one_line(e, 200)})") from None
    why = nesting(data)  # aliases can nest deeper than the text does, or make a list that holds itself
    if why is not None:
        raise UserError(f"{path}: cannot read ({why})")
    config = _mapping(str(path), data or {})
    for section in ("model", "data"):
        if not isinstance(config.get(section, {}), dict):
            raise wrong_type(str(path), section, config[section], "a section (name: value lines)")
    return config


def _results(path: Path) -> dict[str, Any]:
    try:
        results = _mapping(str(path), json.loads(file_text(path)))
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"{path}: cannot read ({one_line(e, 200)})") from None
    for key in NUMBERS:
        if not is_number(results.get(key)):
            raise wrong_type(str(path), key, results[key], "a number or null")
    if not isinstance(results.get("swept") or {}, dict):
        raise wrong_type(str(path), "swept", results["swept"], "a mapping of swept keys to values")
    for key in ("tuned", "trial"):  # a tune: final run's best setting; a trial's own (launch/tune.py)
        if not isinstance(results.get(key) or {}, dict):
            raise wrong_type(str(path), key, results[key], "a mapping (study, params, ...)")
        if not isinstance((results.get(key) or {}).get("params") or {}, dict):
            raise wrong_type(str(path), f"{key}.params", results[key]["params"], "a mapping of searched keys to values")
    return results


def _metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(file_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # a line cut short by a crash: keep the epochs before it
            break
        where = f"{path}: line {i}"
        epoch = _mapping(where, row).get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise wrong_type(where, "epoch", epoch, "an integer")
        for key, value in row.items():
            if not is_number(value):
                raise wrong_type(where, key, value, "a number or null")
        rows.append(row)
    return rows


def load_run(path: Path) -> Run:
    """A run's files, read and checked: one that is unreadable, not UTF-8, or has text where the comparison
    reads a number is a ``UserError`` naming the file and the field."""
    config = _config(path / "config.yaml")
    results = _results(path / "results.json") if (path / "results.json").is_file() else {}
    metrics = _metrics(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
    return Run(path, config, results, metrics)


def find_runs(paths: list[str | Path], left_out: Optional[list[str]] = None) -> list[Run]:
    """Each path is a run directory or a folder of them (e.g. ``runs/``), taken in name order.

    A run whose files cannot be used (``load_run``) raises, or, given a ``left_out`` list, is left out and
    its problem appended there (the caller says so: one bad run need not stop a comparison of ten)."""
    runs: list[Run] = []

    def load(path: Path) -> list[Run]:
        try:
            return [load_run(path)]
        except UserError as e:
            if left_out is None:
                raise
            left_out.append(str(e))
            return []

    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such directory (give run directories written by main.py, or a folder of them)")
        if (p / "config.yaml").is_file():
            runs += load(p)
            continue
        children = sorted(c for c in p.iterdir() if (c / "config.yaml").is_file()) if p.is_dir() else []
        if not children:
            raise UserError(f"{p}: not a run directory and holds none (a run directory has {RUN_FILES})")
        runs += sorted((r for c in children for r in load(c)), key=_sweep_order)
    seen, unique = set(), []
    for r in runs:  # the same run named twice (a folder and one of its runs) counts once
        if r.path.resolve() not in seen:
            seen.add(r.path.resolve())
            unique.append(r)
    return unique


def _sweep_order(run: Run) -> tuple:
    """A folder's runs in the order their sweep ran them (results.json ``point``), runs of no sweep after,
    by name; the sort is stable, so runs of several sweeps keep their name order within one index."""
    point = run.results.get("point")
    return (0, point) if isinstance(point, int) and not isinstance(point, bool) else (1, 0)


@dataclass
class Group:
    """Runs of one experiment that differ only in seed (one run when there are no repeats)."""

    label: str
    runs: list[Run] = field(default_factory=list)
    # Measured by the comparison itself (plots/report.py): {"batch1": ..., "batched": ...}, each
    # models.measure.Latency.to_dict(); empty when latency was not measured.
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def completed(self) -> bool:
        """Whether any of its runs completed (or stopped early, ``Run.finished``); one that has none is shown
        (from its stopped runs, marked) but never ranked: not named best, not on a Pareto front, not in the
        summary's size steps."""
        return any(r.finished for r in self.runs)

    @property
    def counted(self) -> list[Run]:
        """The runs its numbers are over: the completed ones and those that stopped early, each with its own
        epochs (all of them when none did, so an interrupted sweep still shows something, marked by its status).
        Of two runs of one seed (a point run again) the later counts: the same seed twice is not two samples."""
        done = [r for r in self.runs if r.finished] or self.runs
        by_seed = {json.dumps(r.seed): r for r in done}
        return [r for r in done if by_seed[json.dumps(r.seed)] is r]

    def cost(self, key: str) -> Optional[float]:
        """A number every run of the experiment shares (params, FLOPs), from the first run that recorded it."""
        return next((r.results[key] for r in self.runs if r.results.get(key) is not None), None)

    def values(self, key: str) -> list[float]:
        """The finite values of ``key`` over the counted runs."""
        return [v for v in (r.value(key) for r in self.counted) if v is not None and math.isfinite(v)]

    @property
    def swept(self) -> dict[str, Any]:
        """What its sweep set for it, the seed left out (empty for runs of no sweep), as its first run that
        recorded it says."""
        swept = next((r.swept for r in self.runs if r.swept), {})
        return {k: v for k, v in swept.items() if k != "seed"}

    @property
    def tuned(self) -> Optional[bool]:
        """True: a tune: search's best setting, run over the seeds; False: the same experiment at the config's
        own values, its baseline; None: no tuning involved (results.json ``swept.tuned``)."""
        tuned = self.swept.get("tuned")
        return tuned if isinstance(tuned, bool) else None

    @property
    def tuned_params(self) -> dict[str, Any]:
        """The searched keys' best values it was trained with (results.json ``tuned.params``); empty if none."""
        return next((dict(r.results["tuned"].get("params") or {}) for r in self.runs
                     if isinstance(r.results.get("tuned"), dict)), {})

    @property
    def experiment(self) -> str:
        """The experiment it belongs to: its label without `` (tuned)`` / `` (untuned)``."""
        return unmarked(self.label)

    def stat(self, key: str) -> tuple[Optional[float], Optional[float]]:
        """(mean, sample std) over the counted runs that have the value; std is None for a single value."""
        values = self.values(key)
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None

    def curve(self, key: str) -> tuple[list[int], list[float], list[Optional[float]]]:
        """Epochs, mean and std (None where only one run has that epoch) of a per-epoch metric."""
        by_epoch: dict[int, list[float]] = {}
        for r in self.counted:
            for m in r.metrics:
                if key in m and m[key] is not None and math.isfinite(m[key]):
                    by_epoch.setdefault(int(m["epoch"]), []).append(float(m[key]))
        epochs = sorted(by_epoch)
        means = [statistics.fmean(by_epoch[e]) for e in epochs]
        stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else None for e in epochs]
        return epochs, means, stds


def _experiment_key(run: Run) -> str:
    c = json.loads(json.dumps(run.config))  # a deep copy
    for section, keys in _NOT_THE_EXPERIMENT.items():
        if keys is None:
            c.pop(section, None)
        elif isinstance(c.get(section), dict):
            for k in keys:
                c[section].pop(k, None)
    if isinstance(run.swept.get("tuned"), bool):  # a search whose best is the config's own values: still two
        c["tuned"] = run.swept["tuned"]
    return json.dumps(c, sort_keys=True)


# How a tune: call's runs are labelled: its experiment ``x-tuned`` (the best setting) reads ``x (tuned)``, its
# baseline ``x-untuned`` (the config's own values) ``x (untuned)``.
TUNING_MARKS = {True: " (tuned)", False: " (untuned)"}
SETTINGS = {True: "at tuned settings", False: "at the config's settings"}  # swept.tuned, in words


def swept_text(key: str, value: Any) -> str:
    """A swept value as a legend says it: ``train.lr=0.001``; ``tuned`` in words."""
    return SETTINGS[value] if key == "tuned" and isinstance(value, bool) else f"{key}={value}"


def unmarked(label: str) -> str:
    """A label without its tuning mark: the experiment a search tuned."""
    for mark in TUNING_MARKS.values():
        if label.endswith(mark):
            return label[: -len(mark)]
    return label


def _tuning_label(g: Group) -> str:
    if g.tuned is None:
        return g.label
    suffix = "-tuned" if g.tuned else "-untuned"
    base = g.label[: -len(suffix)] if g.label.endswith(suffix) else g.label
    return base + TUNING_MARKS[g.tuned]


def group_runs(runs: list[Run]) -> list[Group]:
    """Group repeats over seeds, in order of first appearance. Labels are unique: experiments of one name
    (e.g. a run resumed with more epochs beside the sweep's) are told apart by the settings that differ,
    ``x [train.epochs=5]``."""
    groups: dict[str, Group] = {}
    for r in runs:
        groups.setdefault(_experiment_key(r), Group("")).runs.append(r)
    for g in groups.values():  # the sweep's experiment name, from any run that recorded it
        g.label = next((str(r.results["experiment"]) for r in g.runs if r.results.get("experiment")), g.first.name)
        g.label = _tuning_label(g)
    by_label: dict[str, list[tuple[str, Group]]] = {}
    for key, g in groups.items():
        by_label.setdefault(g.label, []).append((key, g))
    for label, same in by_label.items():
        if len(same) < 2:
            continue
        flats = [flatten(json.loads(key)) for key, _ in same]
        differ = sorted(k for k in set().union(*flats) if len({json.dumps(f.get(k)) for f in flats}) > 1)
        for (_, g), f in zip(same, flats):
            shown = ", ".join(f"{k}={f.get(k)}" for k in differ[:3]) + (", ..." if len(differ) > 3 else "")
            g.label = f"{label} [{shown}]"
    out, used = list(groups.values()), {}
    for g in out:  # still the same (they differ beyond the 3 keys shown): numbered, as labels key everything
        n = used[g.label] = used.get(g.label, 0) + 1
        if n > 1:
            g.label = f"{g.label} ({n})"
    return out


def size_measure(groups: list[Group]) -> str:
    """What "bigger" means across ``groups``: training FLOPs per image when every one recorded them, else
    parameters (one unit for all, so an order by it never mixes the two)."""
    return "flops_training" if all(g.cost("flops_training") for g in groups) else "params"


def split_prefix(labels: list[str]) -> tuple[str, list[str]]:
    """(the prefix all labels share up to a ``-``, the labels without it), for figures where the full names
    would crowd the points ("sizes-fashion_mnist-cnn_tr_small" -> "cnn_tr_small"); nothing is cut from one
    label, nor when that would leave a label empty. Tuning marks count for nothing: "x-mnist (tuned)" and
    "x-mnist (untuned)" are one experiment, kept whole."""
    bases = [unmarked(label) for label in labels]
    if len(set(bases)) < 2:
        return "", list(labels)
    common = bases[0][: next((i for i, c in enumerate(zip(*bases)) if len(set(c)) > 1), min(map(len, bases)))]
    cut = common.rfind("-") + 1
    if any(len(base) == cut for base in bases):
        cut = 0
    return labels[0][:cut], [label[cut:] for label in labels]


def short_labels(groups: list[Group]) -> dict[str, str]:
    """Each group's label without the prefix all share (``split_prefix``)."""
    labels = [g.label for g in groups]
    return dict(zip(labels, split_prefix(labels)[1]))


LATENCY_FILE = "latency.json"  # in a comparison directory: what evaluate.measure timed, by experiment


def read_latency(out: Path, groups: list[Group]) -> None:
    """Give each group the latency ``out/latency.json`` records for its experiment, if any (a comparison
    rendered again from its files keeps what was measured); an unreadable file is ignored."""
    try:
        recorded = json.loads((out / LATENCY_FILE).read_text())
    except (OSError, ValueError):
        return
    experiments = recorded.get("experiments") if isinstance(recorded, dict) else None
    if not isinstance(experiments, dict):
        return
    for g in groups:
        if isinstance(experiments.get(g.label), dict) and not g.latency:
            g.latency = dict(experiments[g.label])

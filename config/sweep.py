"""Sweeps: a config's ``sweep:`` grid expanded into points (``Point``), one validated ``Config`` each.

No torch here: a typo in a sweep, or any config, is reported before the seconds torch takes to import.
Running the points is ``launch``.
"""
from __future__ import annotations

import copy
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from config.loader import Raw, apply_override, from_dict, models_named, read_config, set_dotted
from config.schema import Config, run_name, setting_warnings
from config.tune import TuneSpec, parse as parse_tune
from core.errors import UserError
from core.log import get_logger
from core.text import flatten

# ----------------------------------------------------------------------------- expansion
#
# A ``sweep:`` section maps dotted keys to lists of values and is expanded as a
# grid (itertools.product, in the order written), each point one run:
#
#   sweep:
#     model.num_layers: [1, 2, 4]
#     seed: [0, 1, 2]
#
# Nested sections are the same as dotted keys (``model: {num_layers: [1, 2]}``).
# A list item that is a mapping sets several keys together, for values that only
# make sense in pairs: ``model: [{cnn_channels: 64, num_heads: 2}, {cnn_channels: 128, num_heads: 4}]``.

MAX_SWEEP_POINTS = 10_000

log = get_logger(__name__)


@dataclass
class Point:
    """One run of a config file: its name, the values its sweep set (empty without a sweep), its config."""

    name: str
    values: dict[str, Any]
    cfg: Config
    source: str
    experiment: str = ""  # the name without its seed: points that differ only in seed are repeats of one
    tune: Optional[TuneSpec] = None  # its config's tune: section (config/tune.py): the point is searched first
    extra: dict[str, Any] = field(default_factory=dict)  # more for results.json (a tuned run's search, launch/tune.py)

    def record(self) -> dict[str, Any]:
        """What the run directory keeps of its place in the sweep (results.json), for the comparison."""
        return {**({"experiment": self.experiment or self.name, "swept": self.values} if self.values else {}),
                **self.extra}


def _flatten_axes(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    axes = flatten(node, f"{prefix}." if prefix else "", keep_empty=True)
    for key, v in axes.items():
        if v == {}:
            raise UserError(f"sweep.{key}: empty section; expected lists of values below it")
    return axes


def _axis_options(key: str, values: Any) -> list[dict[str, Any]]:
    """The assignments (dotted key -> value) of each value of one axis."""
    if not isinstance(values, list) or not values:
        raise UserError(f"sweep.{key}: expected a non-empty list of values, e.g. {key}: [1, 2], got {values!r}")
    if key == "name" or key.startswith("sweep"):
        raise UserError(f"sweep.{key}: cannot be swept; each point's name is made from the swept values")
    return [_flatten_axes(v, key) if isinstance(v, dict) else {key: v} for v in values]


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        text = yaml.safe_dump(value).split("\n")[0]
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, dict)):
        text = yaml.safe_dump(value, default_flow_style=True).strip().replace(" ", "")
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", text)[:40]


def _point_name(raw: dict[str, Any], values: dict[str, Any], short: dict[str, str]) -> str:
    """``<name>-<dataset>`` (``name`` or the model's name) + one ``key=value`` per swept key; a swept model
    is named by itself, followed by the dataset when there is no ``name``; a swept dataset by its own part."""
    parts = [_format_value(v) if k == "model.name" else f"{short[k]}={_format_value(v)}" for k, v in values.items()]
    base = raw.get("name")
    if base is None and "model.name" not in values and isinstance(raw.get("model"), dict):
        base = raw["model"].get("name")
    if "data.name" not in values:
        if base is not None:
            base = _with_dataset(raw, base)
        elif "model.name" in values:
            at = list(values).index("model.name") + 1
            parts[at:at] = [_with_dataset(raw, None, alone=True)]
    return "-".join(([str(base)] if base else []) + [str(p) for p in parts if p])


def _with_dataset(raw: dict[str, Any], name: Any, alone: bool = False) -> Any:
    """A run's name, ``<name>-<dataset>`` (``config.schema.run_name``); ``name`` null = the model's name,
    or with ``alone`` the dataset's name alone. Anything that is not a name yet is returned as it is, for
    ``from_dict`` to report."""
    data, model = raw.get("data"), raw.get("model")
    dataset = data.get("name") if isinstance(data, dict) else None
    if not isinstance(dataset, str) or not dataset:
        return None if alone else name
    if alone:
        return dataset
    if name is None and isinstance(model, dict):
        name = model.get("name")
        name = name.replace("/", "_") if isinstance(name, str) else name  # timm/resnet18 -> timm_resnet18
    return run_name(name, dataset) if isinstance(name, str) and name else name


def expand(raw: dict[str, Any] | Raw, source: str, overrides: list[str] = ()) -> list[Point]:
    """The runs one config describes: itself, or one per point of its ``sweep`` grid.

    ``overrides`` (``--set`` assignments) are applied first; one that sets a swept key is an error,
    since the sweep would silently win. Every point is validated before any of them runs. ``raw`` may
    be a ``Raw`` (``read_config``): an error in a key a base file wrote then names that file.
    """
    origins = raw if isinstance(raw, Raw) else Raw({})
    raw = copy.deepcopy(origins.data if isinstance(raw, Raw) else raw)
    named_for = origins.named_for if origins.named_for is not None else models_named(raw)
    for assignment in overrides:
        apply_override(raw, assignment)
    set_keys = [a.partition("=")[0].strip() for a in overrides]
    if "name" in set_keys:
        named_for = models_named(raw)
    if not models_named(raw) <= named_for:  # the model changed after the name was written: the name was another model's
        raw.pop("name", None)
    sweep = raw.pop("sweep", None)
    tune = _tune_of(raw, source, set_keys)
    if sweep is None:
        raw["name"] = _with_dataset(raw, raw.get("name"))
        try:
            cfg = from_dict(raw)
        except UserError as e:
            where = _written_in(e, origins, source, set_keys)
            raise UserError(f"{where}: {e}" if where else str(e)) from None
        return _searchable([Point(cfg.run_name, {}, cfg, source, tune=tune)], source)
    if not isinstance(sweep, dict) or not sweep:
        raise UserError(f"{source}: sweep: expected a mapping of dotted keys to lists of values, "
                        f"e.g. sweep: {{seed: [0, 1, 2]}}; got {sweep!r}")
    try:
        axes = [_axis_options(key, values) for key, values in _flatten_axes(sweep).items()]
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    keys = [k for options in axes for k in dict.fromkeys(k for o in options for k in o)]
    for k in keys:
        if keys.count(k) > 1:
            raise UserError(f"{source}: sweep.{k}: set by more than one entry of the sweep; keep one")
        for assignment in overrides:
            set_key = assignment.partition("=")[0].strip()
            if not set_key.startswith("sweep") and (set_key == k or k.startswith(set_key + ".")
                                                     or set_key.startswith(k + ".")):
                raise UserError(f"--set {set_key}: also swept by sweep.{k} in {source}; set it in one place")
    count = 1
    for options in axes:
        count *= len(options)
    if count > MAX_SWEEP_POINTS:
        raise UserError(f"{source}: sweep has {count:,} points; at most {MAX_SWEEP_POINTS:,} are allowed")
    leaf = {k: k.rsplit(".", 1)[-1] for k in keys}
    short = {k: leaf[k] if list(leaf.values()).count(leaf[k]) == 1 else k for k in keys}
    points = []
    for combo in itertools.product(*axes):
        values = {k: v for assignment in combo for k, v in assignment.items()}
        point_raw = copy.deepcopy(raw)
        for k, v in values.items():
            set_dotted(point_raw, k, copy.deepcopy(v), f"sweep.{k}")
        name = _point_name(raw, values, short)
        point_raw["name"] = name
        experiment = _point_name(raw, {k: v for k, v in values.items() if k != "seed"}, short)
        points.append(Point(name, values, _point_config(point_raw, source, name, origins, set_keys + keys),
                            source, experiment, tune))
    for key in (tune.params if tune else ()):
        for k in keys:
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                raise UserError(f"{source}: tune.params.{key}: also swept by sweep.{k}; search it or sweep it")
    return _searchable(points, source)


def _tune_of(raw: dict[str, Any], source: str, set_keys: list[str]) -> Optional[TuneSpec]:
    """The config's ``tune:`` section (popped from ``raw``), checked on its own (config/tune.py)."""
    if raw.get("tune") is None:  # none, or tune: null (a base file's search, dropped)
        raw.pop("tune", None)
        return None
    try:
        spec = parse_tune(raw.pop("tune"))
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    for key in spec.params:
        for set_key in set_keys:
            if set_key == key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
                raise UserError(f"--set {set_key}: also searched by tune.params.{key} in {source}; set it in one place")
    return spec


def _searchable(points: list[Point], source: str) -> list[Point]:
    """``points``, once every searched value at the edges of its range is a valid value of its key in each of
    them (``train.lr: {uniform: [0, 0.1]}``: 0 is not a learning rate), so no trial fails on its config."""
    spec = points[0].tune if points else None
    if spec is None:
        return points
    for p in points:
        for key, dist in spec.params.items():
            for value in dist.corners():
                trial_raw = p.cfg.to_dict()
                set_dotted(trial_raw, key, copy.deepcopy(value), f"tune.params.{key}")
                try:
                    from_dict(trial_raw)
                except UserError as e:
                    raise UserError(f"{source}: tune.params.{key}: the value {value!r} does not fit "
                                    f"({e})") from None
    return points


def _point_config(raw: dict[str, Any], source: str, name: str, origins: Raw, set_keys: list[str]) -> Config:
    try:
        return from_dict(raw)
    except UserError as e:
        where = _written_in(e, origins, source, set_keys)
        raise UserError(f"{source} (sweep point {name}): {f'{where}: ' if where else ''}{e}") from None


def _written_in(e: UserError, origins: Raw, source: str, set_keys: list[str]) -> str | None:
    """Where the key an error names was written, when that is a base file of ``source``: '<base> (base of
    <source>)'. None when it is ``source`` itself, --set, a sweep, or the error names no key."""
    m = re.match(r"([A-Za-z_][\w.]*):", str(e))
    if not m:
        return None
    key = m.group(1)
    if any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in set_keys):
        return None
    where = origins.origin(key)
    return f"{where} (base of {source})" if where and where != source else None


def load_points(paths: list[str | Path], overrides: list[str] = (), warn: bool = True) -> list[Point]:
    """Every run of every config file, in order; all validated before anything runs. ``warn``: print
    each setting that cannot take effect (``config.schema.setting_warnings``) once, on stderr."""
    points = [p for path in paths for p in expand(read_config(path), str(path), overrides)]
    if warn and os.environ.get("RANK", "0") == "0":  # torchrun: every process loads; one of them says it
        for line in point_warnings(points):
            log.warning(f"warning: {line}")
    return points


def point_warnings(points: list[Point]) -> list[str]:
    """The settings of ``points`` that cannot take effect, each once, with the file (and point) it is in."""
    seen: dict[str, list[str]] = {}
    for p in points:
        for line in setting_warnings(p.cfg):
            seen.setdefault(line, [])
            if p.source not in seen[line]:
                seen[line].append(p.source)
    return [f"{', '.join(sources)}: {line}" for line, sources in seen.items()]

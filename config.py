"""Typed experiment config: YAML + ``--set`` overrides -> nested dataclasses.

Strict like nanoGPT's configurator, without its ``exec``: unknown keys, wrong
types and missing values are reported with their dotted path, the value
received and what would be valid. Overrides are applied to the raw dict before
validation, so they get exactly the same checks as the file.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from errors import UserError
from registry import did_you_mean

_REQUIRED = object()  # sentinel default for keys the user must set


@dataclass
class ModelConfig:
    """``name`` picks the registered model; every other key is passed to its builder."""

    name: str = _REQUIRED  # type: ignore[assignment]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs}


@dataclass
class DataConfig:
    name: str = _REQUIRED  # type: ignore[assignment]
    root: str = "./datasets"
    download: bool = True
    limit_train: Optional[int] = None  # keep the first N training samples; null = all
    limit_val: Optional[int] = None
    augment: bool = True  # the dataset's standard batched augmentation (see README)
    auto_augment: Literal["none", "trivialaugment"] = "none"  # after the standard augmentation
    random_erasing: float = 0.0  # probability per image of erasing one random box (timm's reprob)
    cache: bool = True  # keep decoded uint8 tensors so the next run starts fast
    cache_dir: Optional[str] = None  # null = $XDG_CACHE_HOME/vitlab or ~/.cache/vitlab


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 512
    lr: float = 1.0e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.05  # not applied to biases and norm weights
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    schedule: Literal["cosine", "onecycle", "multistep", "constant"] = "cosine"
    warmup_epochs: float = 0.0  # linear warmup; for onecycle, the ramp-up (default 30% of training)
    min_lr: float = 0.0  # cosine floor
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # MixUp Beta(alpha, alpha); 0 = off
    cutmix_alpha: float = 0.0  # CutMix Beta(alpha, alpha); 0 = off; with both on, each batch picks one
    top5: bool = False  # also report top-5 validation accuracy
    grad_clip: Optional[float] = None  # max global gradient norm; null = off
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # mixed precision: CUDA bf16 (else fp16); CPU bf16 where it has AMX/AVX512-BF16, else fp32
    channels_last: Optional[bool] = True  # NHWC activations (faster for conv nets on CPU and CUDA); null = true
    compile: bool = False  # torch.compile the model (first steps are slow while it compiles)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # reduce-overhead: CUDA graphs
    log_every: int = 50  # steps between progress-bar updates (each one is a host sync)


@dataclass
class OutputConfig:
    dir: str = "./runs"  # each run gets a new directory below this one
    checkpoints: bool = True  # write last.pt and best.pt


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    name: Optional[str] = None  # run name; null = the model name
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def run_name(self) -> str:
        return self.name or self.model.name

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d


# ----------------------------------------------------------------------------- loading

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _bad(path: str, value: Any, tp: Any) -> UserError:
    return UserError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1, "only Optional[X] unions are supported"
        try:
            return _convert(value, inner[0], path)
        except UserError:
            raise _bad(path, value, tp) from None
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"{path}: got {value!r}{did_you_mean(str(value), map(str, choices))}; "
                            f"valid: {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _bad(path, value, tp)
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(path, value, tp)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, value, tp)
        return value
    if tp is float:
        # PyYAML reads 1e-3 (no dot) as a string; accept numeric strings for float fields.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(path, value, tp)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad(path, value, tp)
        return value
    raise AssertionError(f"unsupported config type {tp} at {path}")


def _build(cls: type, raw: Any, path: str) -> Any:
    where = path or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of keys, got {raw!r} ({type(raw).__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if cls is ModelConfig:  # free-form builder kwargs, checked later against the builder signature
        raw = dict(raw)
        name = raw.pop("name", _REQUIRED)
        if name is _REQUIRED:
            raise UserError(f"{path}.name: required but not set (python main.py --list-models shows the choices)")
        return ModelConfig(name=_convert(name, str, f"{path}.name"), kwargs=raw)
    valid = list(fields)
    for key in raw:
        if key not in fields:
            dotted = f"{path}.{key}" if path else str(key)
            raise UserError(f"{dotted}: unknown key{did_you_mean(str(key), valid)}; "
                            f"valid keys{' in ' + path if path else ''}: {', '.join(valid)}")
    values = {}
    for name, f in fields.items():
        dotted = f"{path}.{name}" if path else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw.get(name), dotted)
        elif name in raw:
            values[name] = _convert(raw[name], tp, dotted)
        elif f.default is _REQUIRED:
            raise UserError(f"{dotted}: required but not set")
    return cls(**values)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set a.b.c=VALUE`` (VALUE parsed as YAML) to the raw config dict."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=3e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise UserError(f"--set {key}: value {text!r} is not valid YAML ({_yaml_problem(e)})") from None
    set_dotted(raw, key, value, f"--set {key}")


def set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """``raw[a][b][c] = value`` for ``key`` "a.b.c", creating sections on the way."""
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            parent = ".".join(parts[: i + 1])
            raise UserError(f"{where}: '{parent}' is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--cfg {path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML: {_yaml_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with sections model, data, train, output; "
                        f"got {type(raw).__name__}")
    return raw


def _check_ranges(cfg: Config) -> None:
    t, d = cfg.train, cfg.data
    checks = [
        ("train.epochs", t.epochs, t.epochs >= 1, "at least 1"),
        ("train.batch_size", t.batch_size, t.batch_size >= 1, "at least 1"),
        ("train.eval_batch_size", t.eval_batch_size, t.eval_batch_size >= 1, "at least 1"),
        ("train.lr", t.lr, t.lr > 0, "greater than 0"),
        ("train.weight_decay", t.weight_decay, t.weight_decay >= 0, "0 or more"),
        ("train.momentum", t.momentum, 0 <= t.momentum < 1, "in [0, 1)"),
        ("train.warmup_epochs", t.warmup_epochs, 0 <= t.warmup_epochs <= t.epochs, f"in [0, train.epochs={t.epochs}]"),
        ("train.min_lr", t.min_lr, 0 <= t.min_lr <= t.lr, f"in [0, train.lr={t.lr}]"),
        ("train.gamma", t.gamma, t.gamma > 0, "greater than 0"),
        ("train.label_smoothing", t.label_smoothing, 0 <= t.label_smoothing < 1, "in [0, 1)"),
        ("train.mixup_alpha", t.mixup_alpha, t.mixup_alpha >= 0, "0 (off) or more"),
        ("train.cutmix_alpha", t.cutmix_alpha, t.cutmix_alpha >= 0, "0 (off) or more"),
        ("data.random_erasing", d.random_erasing, 0 <= d.random_erasing <= 1, "a probability in [0, 1]"),
        ("train.grad_clip", t.grad_clip, t.grad_clip is None or t.grad_clip > 0, "greater than 0, or null"),
        ("train.log_every", t.log_every, t.log_every >= 1, "at least 1"),
        ("data.limit_train", d.limit_train, d.limit_train is None or d.limit_train >= 1, "at least 1, or null"),
        ("data.limit_val", d.limit_val, d.limit_val is None or d.limit_val >= 1, "at least 1, or null"),
        ("train.milestones", t.milestones, t.schedule != "multistep" or bool(t.milestones),
         "a non-empty list of epochs when train.schedule is multistep"),
    ]
    for key, value, ok, valid in checks:
        if not ok:
            raise UserError(f"{key}: got {value!r}; must be {valid}")


def from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "")
    _check_ranges(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """One run's config. A file with a ``sweep:`` section describes several: see ``load_points``."""
    raw = read_yaml(path) if path is not None else {}
    if "sweep" in raw:
        raise UserError(f"{path}: has a sweep: section, i.e. several runs; run it with main.py --cfg")
    for assignment in overrides:
        apply_override(raw, assignment)
    return from_dict(raw)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------- sweeps
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


@dataclass
class Point:
    """One run of a config file: its name, the values its sweep set (empty without a sweep), its config."""

    name: str
    values: dict[str, Any]
    cfg: Config
    source: str


def _flatten_axes(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    axes = {}
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            if not v:
                raise UserError(f"sweep.{key}: empty section; expected lists of values below it")
            axes.update(_flatten_axes(v, key))
        else:
            axes[key] = v
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
    """``name`` (or the model's name) + one ``key=value`` per swept key; a swept model is named by itself."""
    parts = [_format_value(v) if k == "model.name" else f"{short[k]}={_format_value(v)}" for k, v in values.items()]
    base = raw.get("name")
    if base is None and "model.name" not in values and isinstance(raw.get("model"), dict):
        base = raw["model"].get("name")
    return "-".join(([str(base)] if base else []) + parts)


def expand(raw: dict[str, Any], source: str, overrides: list[str] = ()) -> list[Point]:
    """The runs one config describes: itself, or one per point of its ``sweep`` grid.

    ``overrides`` (``--set`` assignments) are applied first; one that sets a swept key is an error,
    since the sweep would silently win. Every point is validated before any of them runs.
    """
    import copy
    import itertools

    raw = copy.deepcopy(raw)
    for assignment in overrides:
        apply_override(raw, assignment)
    sweep = raw.pop("sweep", None)
    if sweep is None:
        cfg = from_dict(raw)
        return [Point(cfg.run_name, {}, cfg, source)]
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
        points.append(Point(name, values, _point_config(point_raw, source, name), source))
    return points


def _point_config(raw: dict[str, Any], source: str, name: str) -> Config:
    try:
        return from_dict(raw)
    except UserError as e:
        raise UserError(f"{source} (sweep point {name}): {e}") from None


def load_points(paths: list[str | Path], overrides: list[str] = ()) -> list[Point]:
    """Every run of every config file, in order; all validated before anything runs."""
    return [p for path in paths for p in expand(read_yaml(path), str(path), overrides)]

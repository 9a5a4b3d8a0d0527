"""YAML + ``--set`` overrides -> a typed ``Config`` (config/schema.py).

Strict like nanoGPT's configurator, without its ``exec``: unknown keys, wrong types, out-of-range or
non-finite numbers and missing values are reported with their dotted path, the value received and what
would be valid. Overrides are applied to the raw dict before validation, so they get the same checks.

The model section's keys are free-form here (the builder's signature checks them, models/factory.py), but
their numbers are checked now, whatever the builder: finite, and no larger than ``MAX_MODEL_VALUE``.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from config.schema import REQUIRED, Config, ModelConfig, check_range
from core.convert import FLOAT_RE, check_number, convert, short_repr, type_hints
from core.errors import UserError
from core.registry import did_you_mean
from core.text import flatten
from core.yamltext import SafeLoader, problem

# A config is a few kilobytes; a larger file is the wrong file (a dataset, a checkpoint), not a config.
MAX_CONFIG_BYTES = 1 << 20
# Every model knob is a size, a count or a rate (depth, embed_dim, num_heads, patch_size, mlp_ratio, dropout).
# None reaches this on the datasets here; a larger one is a typo, and building it would hang or run out of memory.
MAX_MODEL_VALUE = 1 << 16
_MAX_NESTING = 8  # lists inside lists in a model key; deeper is not a model argument
# A base: chain longer than this is a mistake (real ones are two or three files), and each level is a Python frame.
MAX_BASE_DEPTH = 64

# Literal fields where YAML's booleans mean a choice (YAML 1.1 also reads ``off`` as false).
_BOOL_CHOICES = {"compile": {True: "default", False: "off"}}

# Model names that were renamed to say what the model is; an old config gets the new name in its error.
RENAMED_MODELS = {
    "simple_cnn_seed002": "vgg_cifar", "cnn_seed003": "mnist_cnn", "vit_cifar10_patch2_input32": "vit_tiny_patch2_32",
    "vit_seed002": "vit_mini_patch4_32", "vit_seed003": "vit_mini_patchnorm",
    "deepvit_seed003": "deepvit_mini_patchnorm", "hybrid_seed003": "convstem_vit_mini",
    "vit_seed004": "vit_mini_patch16_160", "convmixer_256_12": "convmixer_256_12_ks7_p7",
    "convmixer_256_8": "convmixer_256_8_ks5_p2",
}


# Keys that were replaced; an old config gets the new key in its error.
RENAMED_KEYS = {"train.amp": "train.precision: auto | fp32 | bf16 | fp16 (amp: true is auto, amp: false is fp32)"}


# ----------------------------------------------------------------------------- loading

def _build(cls: type, raw: Any, path: str) -> Any:
    where = path or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of keys, got {short_repr(raw)} ({type(raw).__name__})")
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if cls is ModelConfig:  # free-form builder kwargs, checked later against the builder signature
        raw = dict(raw)
        name = raw.pop("name", REQUIRED)
        if name is REQUIRED:
            raise UserError(f"{path}.name: required but not set (python main.py --list-models shows the choices)")
        name = convert(name, str, f"{path}.name")
        if name in RENAMED_MODELS:
            raise UserError(f"{path}.name: '{name}' was renamed to '{RENAMED_MODELS[name]}'; use the new name")
        for key, value in raw.items():
            if not (isinstance(key, str) and key.isidentifier()):
                raise UserError(f"{path}.{_key_text(key)}: not a parameter name; model parameters are names "
                                f"like depth or embed_dim (python main.py --list-models shows the models)")
            _check_model_value(value, f"{path}.{key}")
        return ModelConfig(name=name, kwargs=raw)
    valid = list(fields)
    for key in raw:
        if key not in fields:
            dotted = f"{path}.{_key_text(key)}" if path else _key_text(key)
            if dotted in RENAMED_KEYS:
                raise UserError(f"{dotted}: replaced by {RENAMED_KEYS[dotted]}")
            raise UserError(f"{dotted}: unknown key{did_you_mean(str(key), valid)}; "
                            f"valid keys{' in ' + path if path else ''}: {', '.join(valid)}")
    values = {}
    for name, f in fields.items():
        dotted = f"{path}.{name}" if path else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw.get(name), dotted)
        elif name in raw:
            value = raw[name]
            if isinstance(value, bool) and name in _BOOL_CHOICES:
                value = _BOOL_CHOICES[name][value]
            values[name] = convert(value, tp, dotted)
            if "range" in f.metadata:
                check_range(dotted, values[name], f.metadata["range"])
        elif f.default is REQUIRED:
            raise UserError(f"{dotted}: required but not set")
    return cls(**values)


def _key_text(key: Any) -> str:
    """A key as printed in a message: itself when it is a plain one-line name, else its (short) repr."""
    return key if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 60 else short_repr(key)


def _check_model_value(value: Any, path: str) -> None:
    """Finite numbers within ``MAX_MODEL_VALUE``, also inside lists. Iterative, and each list is visited once:
    YAML aliases can make a list of lists that is small in memory but exponentially large when walked."""
    stack, seen = [(value, path, 0)], set()
    while stack:
        v, where, depth = stack.pop()
        if isinstance(v, (list, tuple, dict)):
            if id(v) in seen:
                continue
            seen.add(id(v))
            if depth >= _MAX_NESTING:
                raise UserError(f"{where}: nested more than {_MAX_NESTING} levels deep; not a model argument")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            stack.extend((item, f"{where}[{k!r}]", depth + 1) for k, item in items)
            continue
        shown = short_repr(v)
        if isinstance(v, str) and FLOAT_RE.match(v.strip()):  # '1.0e30': a string to YAML, a float to convert()
            v = float(v)
        check_number(v, where)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > MAX_MODEL_VALUE:
            raise UserError(f"{where}: got {shown}; model sizes, counts and rates are at most "
                            f"{MAX_MODEL_VALUE:,} (larger would make building the model hang or run out of memory)")


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set a.b.c=VALUE`` (VALUE parsed as YAML) to the raw config dict."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=3e-4")
    try:
        value = _parse_yaml(text) if text.strip() else None
    except _Refused as e:
        raise UserError(f"--set {key}: {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"--set {key}: value {short_repr(text)} is not valid YAML ({problem(e)})") from None
    except RecursionError:
        raise UserError(f"--set {key}: value is nested too deeply to be a config value") from None
    except ValueError as e:  # PyYAML's constructors: a 5,000-digit integer, a date like 2020-13-45
        raise UserError(f"--set {key}: value {short_repr(text)} cannot be read: {_value_problem(e)}") from None
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


# ----------------------------------------------------------------------------- reading YAML
#
# PyYAML builds an alias (``*a``) as a second reference to its anchor's object, so a few hundred bytes of
# nested aliases are a tree of billions of nodes to anything that walks it (key origins, sweep axes, a
# deepcopy): a "billion laughs". The loader below refuses an alias to a mapping or a list as it composes the
# document, before anything expands it; an alias to a single value stays, with the text it repeats counted.
# It also refuses a key written twice in one mapping, which PyYAML would silently resolve to the last one.


class _Refused(Exception):
    """Something in a YAML text that a config may not use; the caller names the file or --set key."""


class _ConfigLoader(SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self.repeated_chars = 0  # characters that aliases to single values add to the document

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            alias = self.peek_event()
            node = self.anchors.get(alias.anchor)  # unknown: PyYAML's own error
            where = f"line {alias.start_mark.line + 1}: alias *{alias.anchor}"
            if isinstance(node, yaml.CollectionNode):
                kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
                raise _Refused(f"{where} repeats a {kind} (anchored at line {node.start_mark.line + 1}); an alias "
                               f"may repeat only a single value (a number, a string): write the {kind} out, or "
                               f"share sections between files with base:")
            if node is not None:
                self.repeated_chars += len(node.value)
                if self.repeated_chars > MAX_CONFIG_BYTES:
                    raise _Refused(f"{where}: aliases repeat more than {MAX_CONFIG_BYTES:,} characters in all; "
                                   f"a config is at most that large")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # <<: several of them are allowed
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in first_line:
                        lines = f"lines {first_line[key]} and {line}" if first_line[key] != line else f"line {line}"
                        raise _Refused(f"duplicate key {short_repr(key)} ({lines}); a key may appear once per mapping")
                    first_line[key] = line
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    pass
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases to mappings or lists, and without duplicate keys (``_Refused``)."""
    return yaml.load(text, Loader=_ConfigLoader)


def _value_problem(e: ValueError) -> str:
    # "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; use sys.set_..."
    return str(e).split(";")[0].strip() or type(e).__name__


def _read_file(path: Path, referrer: str | None = None) -> dict[str, Any]:
    """One YAML file as a dict, nothing merged. ``referrer`` is the file whose ``base:`` named it."""
    if not path.is_file():
        what = (" (it is a directory)" if path.is_dir() else
                " (it is not a regular file)" if path.exists() else "")
        if referrer is not None:
            raise UserError(f"{referrer}: base: {path}: no such file{what}")
        raise UserError(f"--cfg {path}: no such file{what}")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UserError(f"{path}: {size:,} bytes, too large for a config (at most {MAX_CONFIG_BYTES:,}); "
                            f"is this the right file?")
        raw = _parse_yaml(path.read_text())
    except _Refused as e:
        raise UserError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML: {problem(e)}") from None
    except RecursionError:  # a backstop: SafeLoader refuses text nested past MAX_DEPTH first
        raise UserError(f"{path}: malformed YAML: nested too deeply to be a config") from None
    except ValueError as e:  # PyYAML's constructors: a 5,000-digit integer, a date like 2020-13-45
        raise UserError(f"{path}: a value cannot be read: {_value_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with sections model, data, train, output; "
                        f"got {type(raw).__name__}")
    return raw


# ----------------------------------------------------------------------------- inheritance (base:)
#
# ``base: ../cnn_tr_medium.yaml`` (a path relative to the file that says it, or a list of them, later ones
# winning) makes a file state only what differs from its base: the file's keys deep-merge over the base's.
# Mappings merge key by key; everything else (scalars, lists, a sweep axis's list, null) replaces. One
# exception: a ``model`` section that names a different model replaces the base's whole section, since the
# base's model arguments belong to the base's model. Bases chain; the result has no ``base`` key.

BASE_KEY = "base"


@dataclass
class Raw:
    """A config file with its bases merged in: the raw dict, and for each dotted key the file that set it."""

    data: dict[str, Any]
    origins: dict[str, str] = dataclasses.field(default_factory=dict)
    # The models in effect in the file that last wrote ``name`` (its fixed model.name, or the names its
    # sweep gives model.name): the name is the run's only for them. None: no file wrote a name.
    named_for: frozenset[str] | None = None

    def origin(self, dotted: str) -> str | None:
        """The file that set ``dotted`` or its closest section (None: no file, e.g. a default or --set)."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            where = self.origins.get(".".join(parts[:n]))
            if where is not None:
                return where
        return None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a raw dict, its ``base:`` chain merged in."""
    return read_config(path).data


def read_config(path: str | Path) -> Raw:
    """A config file as a raw dict, its ``base:`` chain merged in, with where each key was written."""
    return _resolve(Path(path), (), None, {})


def _resolve(path: Path, chain: tuple[tuple[Path, str], ...], referrer: str | None,
             resolved: dict[Path, Raw]) -> Raw:
    """``path`` with its bases merged in. ``resolved`` holds each file already resolved in this read, so a
    file named by several bases (a diamond, or a chain of them) is read and merged once, not once per path
    to it: merging never changes the ``Raw`` it merges from. A file can be there only once its own bases
    are resolved, and then none of them leads back to it, so the cycle check over ``chain`` stays exact."""
    identity = _identity(path)
    if identity in resolved:
        return resolved[identity]
    resolved[identity] = _resolve_file(path, chain, referrer, resolved)
    return resolved[identity]


def _resolve_file(path: Path, chain: tuple[tuple[Path, str], ...], referrer: str | None,
                  resolved: dict[Path, Raw]) -> Raw:
    raw = _read_file(path, referrer)
    shown = str(path)
    if BASE_KEY not in raw:
        return Raw(raw, _origins(raw, shown), models_named(raw) if "name" in raw else None)
    bases = raw.pop(BASE_KEY)
    if isinstance(bases, str):
        bases = [bases]
    if not (isinstance(bases, list) and bases and all(isinstance(b, str) and b.strip() for b in bases)):
        raise UserError(f"{shown}: base: expected a config file (a path relative to this file) or a list of "
                        f"them, got {short_repr(bases)}")
    here = (*chain, (_identity(path), shown))
    merged = Raw({})
    named: set[Path] = set()
    for name in bases:
        try:
            target = Path(os.path.normpath(path.parent / Path(name).expanduser()))
            if "\0" in name or len(target.name.encode()) > 255:
                raise ValueError("not a usable file name")
        except (RuntimeError, ValueError) as e:  # ~user that does not exist, a NUL byte, a name too long
            raise UserError(f"{shown}: base: {short_repr(name)}: {e}") from None
        identity = _identity(target)
        if identity in [p for p, _ in here]:
            cycle = [s for _, s in here] + [str(target)]
            raise UserError(f"{shown}: base: {name}: a cycle: {' -> '.join(cycle)}")
        if len(here) >= MAX_BASE_DEPTH:
            files = [s for _, s in here] + [str(target)]
            shortened = [*files[:2], f"... ({len(files) - 4} more)", *files[-2:]]
            raise UserError(f"{shown}: base: {name}: a chain of more than {MAX_BASE_DEPTH} files "
                            f"({' -> '.join(shortened)}); a base: chain may be at most {MAX_BASE_DEPTH} files deep")
        if identity in named:  # each mention merges the whole base again: one base listed 100,000 times is minutes
            raise UserError(f"{shown}: base: {name}: named twice in this list; name each base once")
        named.add(identity)
        _merge(merged, _resolve(target, here, shown, resolved))
    _merge(merged, Raw(raw, _origins(raw, shown)))
    if "name" in raw:
        merged.named_for = models_named(merged.data)
    return merged


def models_named(raw: dict[str, Any]) -> frozenset[str]:
    """The models a config trains: the names its sweep gives ``model.name``, else its ``model.name``.
    Read leniently (a malformed sweep or model section is reported later, by the code that uses it)."""
    sweep = raw.get("sweep")
    swept: list[Any] = []
    if isinstance(sweep, dict):
        for key, values in flatten(sweep).items():
            if isinstance(values, list) and key == "model.name":
                swept += values
            elif isinstance(values, list) and key == "model":  # model: [{name: a, ...}, ...]
                swept += [v.get("name") for v in values if isinstance(v, dict)]
    model = raw.get("model")
    if not swept and isinstance(model, dict):
        swept = [model.get("name")]
    return frozenset(v for v in swept if isinstance(v, str))


def _identity(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _origins(raw: dict[str, Any], where: str, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out[key] = where
        if isinstance(v, dict) and key != "sweep":  # a sweep's keys are dotted keys themselves
            out.update(_origins(v, where, key))
    return out


def _merge(into: Raw, child: Raw) -> None:
    """Deep-merge ``child`` over ``into`` in place (see the comment above ``BASE_KEY``)."""
    _merge_dict(into, child, into.data, child.data, "")
    if "name" in child.data:
        into.named_for = child.named_for


def _merge_dict(into: Raw, child: Raw, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
    for k, v in new.items():
        key = f"{path}.{k}" if path else str(k)
        before = old.get(k)
        other_model = (key == "model" and isinstance(before, dict) and isinstance(v, dict)
                       and "name" in v and v.get("name") != before.get("name"))
        if isinstance(before, dict) and isinstance(v, dict) and not other_model:
            into.origins[key] = child.origins.get(key, into.origins.get(key))
            _merge_dict(into, child, before, v, key)
            continue
        old[k] = copy.deepcopy(v)
        for stale in [o for o in into.origins if o == key or o.startswith(key + ".")]:
            del into.origins[stale]
        into.origins.update({o: w for o, w in child.origins.items() if o == key or o.startswith(key + ".")})


def from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "")
    cfg.check()
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """One run's config. A file with a ``sweep:`` section describes several: see ``load_points``."""
    raw = read_yaml(path) if path is not None else {}
    if raw.get("sweep") is not None:
        raise UserError(f"{path}: has a sweep: section, i.e. several runs; run it with python main.py --cfg")
    raw.pop("sweep", None)  # sweep: null, e.g. a child removing its base's sweep
    for assignment in overrides:
        apply_override(raw, assignment)
    return from_dict(raw)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

"""A value from YAML checked against a type annotation: ``int``, ``float``, ``bool``, ``str``, ``Literal``,
``Optional[X]``, ``X | Literal[...]`` (a number or a named choice) and ``list[X]``; a mismatch is a ``UserError``
naming the path, the value and what is valid.

Numbers must also be usable as numbers: a float must be finite (``.inf``, ``.nan`` and ``1e400`` are refused,
whatever the field's range) and an integer must fit in 64 bits, since every integer here ends up as a tensor
size, a count or a seed. Without these checks ``model.mlp_ratio: .inf`` or a 400-digit ``model.depth`` reach a
builder and fail there with a Python traceback (``OverflowError``).

Used for the config's fields and for the keyword arguments of registered builders (models).
"""
from __future__ import annotations

import functools
import math
import re
import types
import typing
from typing import Any, Literal

from core.errors import UserError
from core.registry import did_you_mean

FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
INT_LIMIT = 2 ** 63  # integers must lie in [-2**63, 2**63): what a tensor size, a count or a seed can hold
_REPR_CHARS = 60  # longer values are shortened in messages, which stay one readable line


@functools.cache
def type_hints(obj: Any) -> dict[str, Any]:
    """``typing.get_type_hints(obj)`` of a class (a config section), computed once: the annotations are strings
    (``from __future__ import annotations``) that ``get_type_hints`` compiles on every call, which made it most
    of the time of building a ``Config`` (4.2 s of the test suite's 5.1 s in ``from_dict``, under cProfile).
    The dict is shared: read it, do not change it."""
    return typing.get_type_hints(obj)


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a readable length: a 400-digit number or a huge list stays one short line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** _REPR_CHARS:
        return f"a {len(str(abs(value)))}-digit integer"
    text = repr(value)
    return text if len(text) <= _REPR_CHARS else f"{text[:_REPR_CHARS - 10]}...{text[-6:]} ({len(text)} characters)"


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        null = " or null" if type(None) in typing.get_args(tp) else ""
        return " or ".join(type_name(a) for a in args) + null
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}s"
    if origin is dict:
        return "a mapping of names to values (name: value lines)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _bad(path: str, value: Any, tp: Any) -> UserError:
    return UserError(f"{path}: expected {type_name(tp)}, got {short_repr(value)} ({type(value).__name__})")


def check_number(value: Any, path: str) -> None:
    """A finite float, an integer that fits in 64 bits; anything else passes (its type is checked elsewhere)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{path}: got {value!r}; must be a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_LIMIT <= value < INT_LIMIT:
        raise UserError(f"{path}: got {short_repr(value)}; must be an integer in [-2**63, 2**63)")


def convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        named = [a for a in inner if typing.get_origin(a) is Literal]
        if len(inner) == 2 and len(named) == 1:  # a number or a named choice: int | Literal["auto"]
            if isinstance(value, str) and value in typing.get_args(named[0]):
                return value
            try:
                return convert(value, next(a for a in inner if a is not named[0]), path)
            except UserError:
                raise _bad(path, value, tp) from None
        assert len(inner) == 1, "only Optional[X] and X | Literal[...] unions are supported"
        check_number(value, path)  # "must be finite", not "expected a number or null, got inf"
        try:
            return convert(value, inner[0], path)
        except UserError:
            raise _bad(path, value, tp) from None
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"{path}: got {short_repr(value)}{did_you_mean(str(value), map(str, choices))}; "
                            f"valid: {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _bad(path, value, tp)
        (item,) = typing.get_args(tp)
        return [convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:  # options passed on as they are (slurm.sbatch): names, and scalar values
        if not isinstance(value, dict):
            raise _bad(path, value, tp)
        for k, v in value.items():
            if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", k):
                raise UserError(f"{path}: key {short_repr(k)} is not an option name (letters, digits, - and _)")
            if not isinstance(v, (str, int, float, bool)):
                raise UserError(f"{path}.{k}: got {short_repr(v)}; must be a string, a number or true/false")
            check_number(v, f"{path}.{k}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(path, value, tp)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, value, tp)
        check_number(value, path)
        return value
    if tp is float:
        # PyYAML reads 1e-3 (no dot) as a string; accept numeric strings for float fields.
        if isinstance(value, str) and FLOAT_RE.match(value.strip()):
            text, value = value, float(value)
            if not math.isfinite(value):
                raise UserError(f"{path}: got {short_repr(text)}, which is {value}; must be a finite number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(path, value, tp)
        try:
            value = float(value)
        except OverflowError:  # an integer with hundreds of digits
            raise UserError(f"{path}: got {short_repr(value)}; too large for a number") from None
        check_number(value, path)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _bad(path, value, tp)
        return value
    raise TypeError(f"unsupported type {tp} at {path}")


def supported(tp: Any) -> bool:
    """Whether ``convert`` knows ``tp`` (other annotations are passed through unchecked)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return len(inner) == 1 and supported(inner[0])
    if origin is Literal:
        return True
    if origin is list:
        return supported(typing.get_args(tp)[0])
    if origin is dict:
        return True
    return tp in (int, float, bool, str)

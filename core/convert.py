"""A value from YAML checked against a type annotation: ``int``, ``float``, ``bool``, ``str``, ``Literal``,
``Optional[X]`` and ``list[X]``; a mismatch is a ``UserError`` naming the path, the value and what is valid.

Used for the config's fields and for the keyword arguments of registered builders (models).
"""
from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

from core.errors import UserError
from core.registry import did_you_mean

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _bad(path: str, value: Any, tp: Any) -> UserError:
    return UserError(f"{path}: expected {type_name(tp)}, got {value!r} ({type(value).__name__})")


def convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1, "only Optional[X] unions are supported"
        try:
            return convert(value, inner[0], path)
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
        return [convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
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
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(path, value, tp)
        try:
            return float(value)
        except OverflowError:  # an integer with hundreds of digits
            raise UserError(f"{path}: got a {len(str(value))}-digit number; too large for a float") from None
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
    return tp in (int, float, bool, str)

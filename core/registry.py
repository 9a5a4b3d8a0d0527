"""A small name -> builder registry shared by models and datasets.

Modelled on timm's ``register_model``, with errors that say what would be valid:
an unknown name lists the available ones (and a close match), and builder
keyword arguments are checked against the builder's signature before calling it.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterable

from core.errors import UserError


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


class Registry:
    def __init__(self, kind: str, key: str):
        self.kind = kind  # "model" / "dataset", used in messages
        self.key = key  # the config key that names an entry, e.g. "model.name"
        self._entries: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, fn: Callable[..., Any] | None = None, *, name: str | None = None, **meta: Any):
        """Decorator: ``@REGISTRY.register`` or ``@REGISTRY.register(name=..., **meta)``."""

        def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
            key = name or f.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = f
            self._meta[key] = meta
            return f

        return wrap(fn) if fn is not None else wrap

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise UserError(
                f"{self.key}: unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"valid: {', '.join(self.names())}"
            )
        return self._entries[name]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.get(name)).parameters)

    def check_kwargs(self, name: str, kwargs: dict[str, Any], section: str, reserved: Iterable[str] = ()) -> None:
        """Reject keyword arguments the builder does not accept, naming the accepted ones."""
        params = self.parameters(name)
        reserved = set(reserved)
        accepted = sorted(p for p in params if p not in reserved)
        for key in kwargs:
            if key in reserved:
                raise UserError(
                    f"{section}.{key}: set by the dataset, not the config; "
                    f"{self.kind} '{name}' accepts: {', '.join(accepted) or '(nothing)'}"
                )
            if key not in params:
                raise UserError(
                    f"{section}.{key}: not a parameter of {self.kind} '{name}'"
                    f"{did_you_mean(key, accepted)}; accepted: {', '.join(accepted) or '(nothing)'}"
                )
        missing = [p.name for p in params.values()
                   if p.default is inspect.Parameter.empty and p.name not in reserved and p.name not in kwargs
                   and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
        if missing:
            raise UserError(f"{section}.{missing[0]}: required by {self.kind} '{name}' but not set")

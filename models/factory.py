"""The model registry: ``@register_model``, ``create_model(name, ...)``, ``list_models()``, ``build_model(cfg, spec)``.

Every builder is a function with the keyword-only arguments ``num_classes``,
``in_chans`` and ``image_size`` (filled in from the dataset) plus its own knobs
(filled in from the ``model`` section of the config): its signature is the
config schema, and the first line of its docstring is what ``--list-models``
prints.
"""
from __future__ import annotations

import functools
import typing
from typing import Any

import torch.nn as nn

from core.convert import convert, supported
from core.errors import UserError
from core.registry import Registry
from models import timm_adapter
from models.families import TIMM_WORDS, families_named, family_of

class ModelRegistry(Registry):
    """The registered models, and any timm model as ``timm/<name>`` (models/timm_adapter.py): those are not
    listed by ``names()`` (timm has over a thousand), but ``get``, ``meta`` and ``check_kwargs`` take them,
    so every caller builds them like a registered model."""

    def get(self, name: str):
        if timm_adapter.is_timm(name):
            return timm_adapter.builder(name)
        if name not in self._entries:
            self._family_word(name)
        return super().get(name)

    def family(self, name: str):
        """The family (models/families.py) of a registered model."""
        return family_of(self.get(name).__module__)

    def _family_word(self, word: str) -> None:
        """A family's name given as a model's (``model.name: hybrid``): one line listing that family's models."""
        if word.strip().lower() in TIMM_WORDS:
            raise UserError(f"{self.key}: '{word}' is a library, not a model; name one of its models as "
                            f"timm/<name>, e.g. timm/resnet18 (docs/models.md#timm-models)")
        families = families_named(word)
        if families:
            listed = "; ".join(f"{f.title}: {', '.join(n for n in self.names() if self.family(n) is f)}"
                               for f in families)
            raise UserError(f"{self.key}: '{word}' is a family, not a model; did you mean one of {listed} "
                            f"(python main.py --list-models)?")

    def meta(self, name: str) -> dict[str, Any]:
        if timm_adapter.is_timm(name):
            timm_adapter.builder(name)
            return {}
        return super().meta(name)

    def check_kwargs(self, name: str, kwargs: dict[str, Any], section: str, reserved=()) -> None:
        if timm_adapter.is_timm(name):
            return timm_adapter.check_kwargs(name, kwargs, section, reserved)
        return super().check_kwargs(name, kwargs, section, reserved)


MODELS = ModelRegistry("model", "model.name")
DATASET_KEYS = ("num_classes", "in_chans", "image_size")


def register_model(fn=None, **meta):
    """``@register_model`` or ``@register_model(default_dataset="imagenette")``; the entry is the function's name."""
    return MODELS.register(fn, **meta)


def list_models() -> list[str]:
    return MODELS.names()


def create_model(name: str, *, num_classes: int, in_chans: int, image_size: int, **kwargs: Any) -> nn.Module:
    """The registered model ``name``; its keyword arguments are checked against the builder's signature and
    annotated types first, so ``model.qkv_bias: 'false'`` is an error rather than a truthy string."""
    MODELS.check_kwargs(name, kwargs, "model", reserved=DATASET_KEYS)
    kwargs = _typed(name, kwargs)
    try:
        return MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs)
    except UserError:
        raise
    except ValueError as e:  # architecture checks in __init__ (shapes, divisibility)
        fixed = "model.patch_size=" in str(e) and "patch_size" not in MODELS.parameters(name)
        raise UserError(f"model '{name}': {e}" + (f"; {name} fixes its patch size, so for another use "
                                                  f"model.name: vit" if fixed else "")) from None
    except (TypeError, RuntimeError) as e:  # arguments no check above caught (torch refusing a shape, ...)
        raise UserError(f"model '{name}': cannot build with {kwargs or 'its defaults'}: "
                        f"{(str(e).strip().splitlines() or [''])[0]}") from None


def build_model(cfg, spec) -> nn.Module:
    """The model a config names, sized for a dataset spec. Seeds nothing: the caller seeds before calling.

    ``cfg`` needs ``.model.name`` and ``.model.kwargs``; ``spec`` needs ``.num_classes``, ``.in_chans``
    and ``.image_size``.
    """
    # Before the call: a dataset-owned key in the config (num_classes, ...) would otherwise be a Python
    # "multiple values for keyword argument" TypeError instead of the usual one-line error.
    MODELS.check_kwargs(cfg.model.name, cfg.model.kwargs, "model", reserved=DATASET_KEYS)
    return create_model(cfg.model.name, num_classes=spec.num_classes, in_chans=spec.in_chans,
                        image_size=spec.image_size, **cfg.model.kwargs)


@functools.cache
def _hints(name: str) -> dict[str, Any]:
    """A builder's annotations, by model name: a timm model's builder is a new function each time the registry
    hands it out, which a cache keyed on the function would never find again."""
    return typing.get_type_hints(MODELS.get(name))


def _typed(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    hints = _hints(name)
    return {k: convert(v, hints[k], f"model.{k}") if k in hints and supported(hints[k]) else v
            for k, v in kwargs.items()}

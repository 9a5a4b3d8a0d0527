"""The model registry: ``@register_model``, ``create_model(name, ...)``, ``list_models()``.

Every builder takes the same keywords (``num_classes``, ``in_chans``,
``image_size``), filled in from the dataset, plus its own, filled in from the
``model`` section of the config.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from errors import UserError
from registry import Registry

MODELS = Registry("model", "model.name")
DATASET_KEYS = ("num_classes", "in_chans", "image_size")


def register_model(fn=None, **meta):
    return MODELS.register(fn, **meta)


def list_models() -> list[str]:
    return MODELS.names()


def create_model(name: str, *, num_classes: int, in_chans: int, image_size: int, **kwargs: Any) -> nn.Module:
    MODELS.check_kwargs(name, kwargs, "model", reserved=DATASET_KEYS)
    try:
        return MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs)
    except ValueError as e:  # architecture checks in __init__ (shapes, divisibility)
        raise UserError(f"model '{name}': {e}") from None
    except TypeError as e:  # e.g. a string where a builder wanted a number
        raise UserError(f"model '{name}': bad argument: {e}") from None

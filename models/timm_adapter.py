"""``model.name: timm/<name>``: any timm model, built like a registered one.

``timm.create_model(name, pretrained=False, num_classes=, in_chans=, img_size=)`` with the dataset's sizes
(``img_size`` only where the model takes one: ViT-family models do, CNNs adapt to any size), every other
``model.*`` key passed on as a keyword argument. timm takes seconds to import, so it is imported here, on
the first ``timm/`` name, never by ``import models``.

Every problem is a one-line ``UserError``: timm not installed, an unknown name (with a close match from
``timm.list_models()``), arguments the model refuses, and an input size it cannot take (found by one
forward pass of a single blank image at build time, so a run fails before its data is loaded, not at its
first batch).
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from core.errors import UserError, one_line
from models.shapes import patch_problem

PREFIX = "timm/"


def is_timm(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def _timm(name: str):
    try:
        import timm
    except ImportError:
        raise UserError(f"model.name: {name} needs the timm package, which is not installed here: "
                        f"pip install timm (or pick a model from python main.py --list-models)") from None
    return timm


def builder(name: str) -> Callable[..., nn.Module]:
    """A builder for ``timm/<arch>`` with the registry's keywords (``num_classes``, ``in_chans``,
    ``image_size``); an unknown architecture is an error now, before anything is built."""
    arch = name[len(PREFIX):]
    timm = _timm(name)
    if not arch or not timm.is_model(arch):
        match = difflib.get_close_matches(arch, timm.list_models(), n=1)
        hint = f" (did you mean '{PREFIX}{match[0]}'?)" if match else ""
        raise UserError(f"model.name: unknown timm model '{arch}'{hint}; timm.list_models() lists them "
                        f"(python -c \"import timm; print(timm.list_models('*vit*'))\")")

    def build(*, num_classes: int, in_chans: int, image_size: int, **kwargs: Any) -> nn.Module:
        return _create(timm, name, arch, num_classes, in_chans, image_size, kwargs)

    build.__doc__ = f"timm's {arch} (timm.create_model, not pretrained)"
    build.__name__ = name
    return build


def check_kwargs(name: str, kwargs: dict[str, Any], section: str, reserved: Iterable[str]) -> None:
    """Only the dataset's keys can be checked before building: timm models take ``**kwargs``."""
    builder(name)
    for key in kwargs:
        if key in set(reserved) | {"img_size", "pretrained"}:
            what = ("pretrained weights are not used: models train from scratch" if key == "pretrained"
                    else "set by the dataset, not the config")
            raise UserError(f"{section}.{key}: {what} (for {name}, other model keys go to timm.create_model)")


def _create(timm, name: str, arch: str, num_classes: int, in_chans: int, image_size: int,
            kwargs: dict[str, Any]) -> nn.Module:
    common = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    try:
        try:
            model = timm.create_model(arch, img_size=image_size, **common)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
            model = timm.create_model(arch, **common)  # a CNN: no img_size, it adapts to any input size
    except Exception as e:  # noqa: BLE001 - whatever timm raises while building comes from the arguments
        raise UserError(f"model '{name}': cannot build with {kwargs or 'its defaults'}: {one_line(e, limit=160)}") from None
    _check_patches(model, name, in_chans, image_size)
    _check_input(model, name, in_chans, image_size, kwargs)
    return model


def _check_patches(model: nn.Module, name: str, in_chans: int, image_size: int) -> None:
    """timm's patch embedding crops what its patches do not cover and accepts a grid of one patch (a ViT's
    patch 16 at 28 px: one token, 12 px dropped); both are errors here, as for our ViTs (models/shapes.py)."""
    for module in model.modules():
        patch, proj = getattr(module, "patch_size", None), getattr(module, "proj", None)
        if (type(module).__name__ == "PatchEmbed" and isinstance(proj, nn.Conv2d) and proj.in_channels == in_chans
                and patch is not None):
            side = patch[0] if isinstance(patch, (tuple, list)) else patch
            problem = patch_problem(int(side), image_size)
            if problem:
                raise UserError(f"model '{name}': {problem}")


def _check_input(model: nn.Module, name: str, in_chans: int, image_size: int, kwargs: dict[str, Any]) -> None:
    """One forward pass of one blank image (on the model's device: free on the meta device), so a size the
    model cannot take is an error now. Eval mode and no grad: no statistic or parameter changes."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    smallest: list[tuple[int, int, str]] = []  # the last feature map seen: (H, W, the module that made it)
    names = {m: n for n, m in model.named_modules()}

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4 and module is not model:
            smallest[:] = [(output.shape[-2], output.shape[-1], names.get(module, "?"))]

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d,
                                                                                         nn.AvgPool2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size, device=device))
    except (RuntimeError, AssertionError, ValueError, TypeError, IndexError, ArithmeticError) as e:
        size = f"{in_chans}x{image_size}x{image_size}"
        if smallest and min(smallest[0][:2]) <= 1 and "size" in str(e).lower():
            h, w, where = smallest[0]
            raise UserError(
                f"model '{name}': its feature map shrinks below 1x1 on this dataset's {size} images (already "
                f"{h}x{w} after {where}); use a model that downsamples less (e.g. timm/resnet18, which pads) "
                f"or larger images") from None
        raise UserError(
            f"model '{name}': cannot take this dataset's {size} images ({one_line(e, limit=160)}); try a model that "
            f"adapts to the size (a CNN such as timm/resnet18), or model arguments that fit {image_size}x"
            f"{image_size} (e.g. patch_size, window_size, fewer stages)") from None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

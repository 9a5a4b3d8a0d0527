"""The registered models as a table (``main.py --list-models`` and docs/models.md)."""
from __future__ import annotations

from typing import Callable

import torch

from models.factory import MODELS, create_model


def models_table(spec_of: Callable[[str], object]) -> str:
    """One line per registered model: name, parameters at its default dataset, that dataset, the first line of
    its builder's docstring. ``spec_of(name)``: the dataset's spec (``data.get_spec``), which says the classes,
    channels and image size the model is built for."""
    rows = []
    for name in MODELS.names():
        spec = spec_of(MODELS.meta(name).get("default_dataset", "cifar10"))
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = create_model(name, num_classes=spec.num_classes, in_chans=spec.in_chans,
                                 image_size=spec.image_size)
        params = sum(p.numel() for p in model.parameters())
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
        rows.append((name, f"{params:,}", spec.name, doc[0] if doc else ""))
    widths = [max(len(r[i]) for r in rows + [("model", "params", "dataset", "")]) for i in range(3)]
    lines = [f"{'model':<{widths[0]}}  {'params':>{widths[1]}}  {'dataset':<{widths[2]}}  description"]
    lines += [f"{n:<{widths[0]}}  {p:>{widths[1]}}  {d:<{widths[2]}}  {doc}" for n, p, d, doc in rows]
    lines.append("\nand any timm model as model.name: timm/<name>, e.g. timm/resnet18, timm/convnext_atto "
                 "(not pretrained; timm.list_models() lists them; docs/models.md)")
    return "\n".join(lines)

"""The registered models, each built once under ``torch.device("meta")`` (shapes only): what
``main.py --list-models`` prints and docs/models.md tabulates (docs/generate.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from models.factory import DATASET_KEYS, MODELS, create_model


@dataclass(frozen=True)
class Entry:
    name: str
    params: int  # at its default dataset
    dataset: str  # its default dataset
    keys: tuple[str, ...]  # its model.* keys (the dataset's own keys left out)
    doc: str  # the first line of its builder's docstring


def catalog(spec_of: Callable[[str], object]) -> list[Entry]:
    """Every registered model. ``spec_of(name)``: the dataset's spec (``data.get_spec``), which says the classes,
    channels and image size the model is built for (``models`` does not import ``data``)."""
    entries = []
    for name in MODELS.names():
        spec = spec_of(MODELS.meta(name).get("default_dataset", "cifar10"))
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = create_model(name, num_classes=spec.num_classes, in_chans=spec.in_chans,
                                 image_size=spec.image_size)
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
        entries.append(Entry(name, sum(p.numel() for p in model.parameters()), spec.name,
                             tuple(p for p in MODELS.parameters(name) if p not in DATASET_KEYS),
                             doc[0].strip() if doc else ""))
    return entries


def models_table(spec_of: Callable[[str], object]) -> str:
    """``--list-models``: name, parameters at its default dataset, that dataset, what it is."""
    rows = [(e.name, f"{e.params:,}", e.dataset, e.doc) for e in catalog(spec_of)]
    widths = [max(len(r[i]) for r in rows + [("model", "params", "dataset", "")]) for i in range(3)]
    lines = [f"{'model':<{widths[0]}}  {'params':>{widths[1]}}  {'dataset':<{widths[2]}}  description"]
    lines += [f"{n:<{widths[0]}}  {p:>{widths[1]}}  {d:<{widths[2]}}  {doc}" for n, p, d, doc in rows]
    lines.append("\nand any timm model as model.name: timm/<name>, e.g. timm/resnet18, timm/convnext_atto "
                 "(not pretrained; timm.list_models() lists them; docs/models.md)")
    return "\n".join(lines)

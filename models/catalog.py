"""The registered models, each built once under ``torch.device("meta")`` (shapes only): what
``main.py --list-models`` prints and docs/models.md tabulates (docs/generate.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from models.factory import DATASET_KEYS, MODELS, create_model
from models.families import FAMILIES


@dataclass(frozen=True)
class Entry:
    name: str
    params: int  # at its default dataset
    dataset: str  # its default dataset
    keys: tuple[str, ...]  # its model.* keys (the dataset's own keys left out)
    doc: str  # the first line of its builder's docstring
    family: str  # its family's title (models/families.py)
    inputs: tuple[int, ...]  # the input sizes (px) it is built for: register_model(inputs=...), else its dataset's


def _family_order(e: Entry) -> tuple[int, str]:
    return [f.title for f in FAMILIES].index(e.family), e.name


def catalog(spec_of: Callable[[str], object]) -> list[Entry]:
    """Every registered model, grouped by family. ``spec_of(name)``: the dataset's spec (``data.get_spec``), which says the classes,
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
                             doc[0].strip() if doc else "", MODELS.family(name).title,
                             tuple(MODELS.meta(name).get("inputs", (spec.image_size,)))))
    return sorted(entries, key=_family_order)


def input_text(e: Entry) -> str:
    return "/".join(map(str, e.inputs)) + " px"


def models_table(spec_of: Callable[[str], object]) -> str:
    """``--list-models``: the models by family (the words people search for), each with its parameters at its
    default dataset, that dataset, the input size it is built for and what it is."""
    entries = catalog(spec_of)
    rows = [(e.name, f"{e.params:,}", e.dataset, input_text(e), e.doc) for e in entries]
    widths = [max(len(r[i]) for r in rows + [("model", "params", "dataset", "input", "")]) for i in range(4)]
    line = lambda n, p, d, i, doc: f"  {n:<{widths[0]}}  {p:>{widths[1]}}  {d:<{widths[2]}}  {i:<{widths[3]}}  {doc}"  # noqa: E731
    lines = [line("model", "params", "dataset", "input", "description")]
    for family in FAMILIES:
        members = [r for e, r in zip(entries, rows) if e.family == family.title]
        if members:
            lines.append(f"{family.title}{f'  ({family.note})' if family.note else ''}")
            lines += [line(*r) for r in members]
    lines.append("\ntimm: any timm model as model.name: timm/<name>, e.g. timm/resnet18, timm/convnext_atto "
                 "(not pretrained; timm.list_models() lists them; docs/models.md)")
    return "\n".join(lines)

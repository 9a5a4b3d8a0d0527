"""Reading weight files safely: ``torch.load(weights_only=True)`` (tensors and plain containers, never code)
with every failure, and every file of another model or dataset, a one-line ``UserError``."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from core.errors import UserError


def read(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` onto the CPU, with every failure a one-line ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what} file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no central directory
        raise UserError(f"{path}: not a {what} written by torch.save (truncated, corrupted or another format); "
                        f"delete it and write it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: holds Python objects besides tensors and plain containers; refused, as "
                        f"torch.load(weights_only=True) refuses anything that could run code") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, foreign pickle, disallowed global, I/O error...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{path}: not a readable {what} (truncated, corrupted or not written by "
                        f"torch.save: {first})") from None


RUN_ID_KEY = "vitlab"  # the entry of a best.pt's state-dict metadata that names its run (no module has this name)


def run_id_of(obj: Any) -> Optional[str]:
    """The run a checkpoint names: a ``last.pt``'s ``run_id``, or a ``best.pt`` state dict's metadata entry
    (``train.rundir.RunDir.save_weights``); None for a file written before run ids."""
    if isinstance(obj, dict) and "run_id" in obj and not isinstance(obj.get("run_id"), torch.Tensor):
        return obj["run_id"] if isinstance(obj["run_id"], str) else None
    entry = (getattr(obj, "_metadata", None) or {}).get(RUN_ID_KEY)
    return entry.get("run_id") if isinstance(entry, dict) and isinstance(entry.get("run_id"), str) else None


def load_weights(model: nn.Module, path: str | Path, describe: str) -> Optional[str]:
    """Load ``best.pt`` / ``last.pt`` weights into ``model`` (``describe``: e.g. "vit on cifar10"); a file of
    another model or dataset gets a one-line error saying what differs. Returns the run the file names
    (``run_id_of``)."""
    obj = read(path)
    # A training checkpoint (train/checkpoint.py) keeps the weights under "model".
    state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: holds a {type(state).__name__}, not model weights (a state_dict)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise UserError(f"{path}: holds weights of another model than {describe} "
                        f"({len(missing)} of its tensors missing, e.g. {missing[:1]}; "
                        f"{len(extra)} unexpected, e.g. {extra[:1]})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise UserError(f"{path}: {k} is {tuple(v.shape)} in the file but {tuple(own[k].shape)} in {describe} "
                            f"(weights of another model size or dataset, e.g. another number of classes)")
    model.load_state_dict(state)
    return run_id_of(obj)

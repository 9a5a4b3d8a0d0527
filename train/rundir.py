"""One run's directory and everything written into it, each file whole (``core.files.atomic_write``).

  config.yaml      the resolved config (after --set overrides and sweep values)
  summary.txt      the torchinfo summary
  metrics.jsonl    one JSON line per finished epoch, appended and flushed as each ends
  results.json     status (running / completed / diverged / interrupted / failed), what was trained,
                   and once it ends, best/final accuracy and timings; ``error`` says why a run stopped
  last.pt, best.pt model state dicts (``torch.load`` + ``load_state_dict`` into ``models.create_model``)
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from core.errors import UserError
from core.files import atomic_write

STATUSES = ("running", "completed", "diverged", "interrupted", "failed")


def new_dir(root: str | Path, name: str) -> Path:
    """A fresh directory ``root/name-YYYYmmdd-HHMMSS[-k]``; an existing one is never reused."""
    root = Path(root).expanduser()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        path = root / (f"{name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"output.dir: cannot create {path} ({e.strerror})") from None
    raise UserError(f"output.dir: too many runs named {name} at {stamp} in {root}")


class RunDir:
    """A run's directory. Made by ``create()`` (``fit`` calls it once the run can start), so a run that
    fails on bad input before that leaves nothing behind; ``path`` is None until then."""

    def __init__(self, root: str | Path, name: str, *, extra: Optional[dict[str, Any]] = None):
        self.root, self.name = Path(root), name
        self.path: Optional[Path] = None
        self.results: dict[str, Any] = {"name": name, **(extra or {})}

    def create(self) -> Path:
        assert self.path is None, "a RunDir is created once"
        self.path = new_dir(self.root, self.name)
        return self.path

    def write(self, filename: str, text: str) -> Path:
        return atomic_write(self._file(filename), text)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics as one line, flushed to the OS before returning."""
        with open(self._file("metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    def save_weights(self, filename: str, model: nn.Module) -> None:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_write(self._file(filename), lambda f: torch.save(state, f))

    def update(self, status: str, **fields: Any) -> dict[str, Any]:
        """Record the run's status (and any results) in results.json; returns everything recorded so far."""
        assert status in STATUSES, status
        self.results.update(fields, status=status)
        atomic_write(self._file("results.json"), json.dumps(self.results, indent=2) + "\n")
        return self.results

    def _file(self, filename: str) -> Path:
        assert self.path is not None, "RunDir.create() first"
        return self.path / filename

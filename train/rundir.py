"""One run's directory and everything written into it, each file whole (``core.files.atomic_write``).

  config.yaml      the resolved config (after --set overrides and sweep values)
  summary.txt      the torchinfo summary
  metrics.jsonl    one JSON line per finished epoch, appended and flushed as each ends; rebuilt from
                   last.pt on --resume, so it never keeps an epoch the checkpoint does not
  results.json     written when the run starts and at every epoch: status (core/status.py: running /
                   completed / stopped_early / diverged / interrupted / failed), progress, provenance (command,
                   git commit, versions, device, host, pid, times), ``attempts`` (one per start or resume), and
                   once it ends, best/final accuracy and timings; ``error`` says why a run stopped
  last.pt          the whole training state (train/checkpoint.py), for --resume
  best.pt          the best epoch's model state dict (``torch.load`` + ``load_state_dict`` into
                   ``models.create_model``)
  best_ema.pt      train.ema_decay: the weight EMA's state dict at its best epoch (the same keys)

  .lock            held (flock, core/lock.py) by the one process that writes the run: a second one
                   (two --resume at once) is refused in one line naming the holder

Every file names the run it belongs to (``run_id``: results.json, config.yaml's first line, last.pt, best.pt's
metadata), so a file copied in from another run is refused rather than adopted.

A run killed with SIGKILL leaves results.json saying ``running`` with a pid and host that no longer
run it (``is_live`` tells: nobody holds its lock), every other file whole, and at worst a temporary
``.tmp-*`` file that the next ``--resume`` removes.
"""
from __future__ import annotations

import io
import json
import re
import secrets
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from core.errors import RunFailed, UserError
from core.files import atomic_write, remove_stale_temporaries, strict_json
from core.lock import DirLock, writer_alive
from core.procs import process_alive
from models.weights import RUN_ID_KEY
from core.status import STATUSES

CONFIG_HEADER = "# run_id: "  # config.yaml's first line names its run



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


def read_results(path: str | Path) -> Optional[dict[str, Any]]:
    """A run directory's results.json, or None when it is missing or unreadable."""
    try:
        data = json.loads((Path(path) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_live(results: dict[str, Any], path: Optional[str | Path] = None) -> Optional[bool]:
    """Whether a run's process still runs (``core.lock.writer_alive``; without ``path``, by its pid and start
    time alone)."""
    if path is not None:
        return writer_alive(path, results)
    if results.get("status") != "running":
        return False
    return process_alive(results.get("host"), results.get("pid"), results.get("pid_started"))


def config_text(config_yaml: str, run_id: Optional[str]) -> str:
    """config.yaml's text: the resolved config under a comment line that names its run."""
    return (f"{CONFIG_HEADER}{run_id}\n" if run_id else "") + config_yaml


def config_run_id(path: str | Path) -> Optional[str]:
    """The run a config.yaml names on its first line (None: none named, e.g. written before run ids)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(200).decode(errors="replace")
    except OSError:
        return None
    m = re.fullmatch(re.escape(CONFIG_HEADER) + r"([0-9a-f]{1,64})\s*", first)
    return m.group(1) if m else None


class RunDir:
    """A run's directory. Made by ``create()`` (``fit`` calls it once the run can start), so a run that
    fails on bad input before that leaves nothing behind; ``path`` is None until then. ``RunDir.existing``
    opens one to resume it.

    Listeners are declared when it is made: ``on_create(path)`` once a new directory exists, e.g. a sweep
    recording where its point runs; ``on_epoch(row)`` after each epoch's row is in metrics.jsonl, e.g. a
    ``--jobs`` worker reporting progress to its launcher.
    """

    def __init__(self, root: str | Path, name: str, *, extra: Optional[dict[str, Any]] = None,
                 on_create: Sequence[Callable[[Path], None]] = (),
                 on_epoch: Sequence[Callable[[dict[str, Any]], None]] = ()):
        self.root, self.name = Path(root), name
        self.path: Optional[Path] = None
        # run_id names this run in results.json, config.yaml and every checkpoint: a file from another run
        # copied in is refused (train/resume.py) instead of adopted.
        self.results: dict[str, Any] = {"name": name, "run_id": secrets.token_hex(8), **(extra or {})}
        self.resuming = False
        self.lock: Optional[DirLock] = None
        self.on_create, self.on_epoch = tuple(on_create), tuple(on_epoch)
        # False in the processes of a several-process run other than rank 0 (``follow``): they write nothing.
        self.writes = True

    @classmethod
    def existing(cls, path: str | Path, *, on_epoch: Sequence[Callable[[dict[str, Any]], None]] = (),
                 claim: bool = True) -> "RunDir":
        """A run directory written before, to continue in place (``--resume``). ``claim``: take its lock now,
        before anything is read (another process that holds it is a one-line ``Busy``); otherwise ``create``
        takes it when the run starts (a multi-run call plans its points before its workers run them)."""
        path = Path(path).expanduser()
        if not path.is_dir():
            raise UserError(f"--resume {path}: no such directory")
        run = cls(path.parent, path.name, on_epoch=on_epoch)
        run.path, run.resuming = path, True
        if claim:
            run.claim()
        results = read_results(path)  # missing or unreadable: rebuilt from last.pt (train/resume.py)
        run.results = {"name": path.name, **(results or {})}
        run.name = run.results["name"]
        return run

    def claim(self) -> None:
        """Hold the directory's lock (core/lock.py) until ``release``: one process writes a run at a time."""
        if self.writes and self.lock is None:
            self.lock = DirLock(self.path, "run directory").acquire()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def follow(self) -> None:
        """This process is not rank 0 of a several-process run: it writes nothing and takes rank 0's path
        (``adopt``)."""
        self.writes = False

    def adopt(self, path: Optional[Path]) -> None:
        """The directory rank 0 made (a several-process run)."""
        self.path = path

    def create(self) -> Optional[Path]:
        """Make the directory (a new run; the ``on_create`` listeners are told), or clean an existing one up for
        its resumed run."""
        if self.resuming:
            if self.writes:
                self.claim()
                remove_stale_temporaries(self.path)
            return self.path
        assert self.path is None, "a RunDir is created once"
        if not self.writes:
            return None
        self.path = new_dir(self.root, self.name)
        self.claim()
        for listener in self.on_create:
            listener(self.path)
        return self.path

    def write(self, filename: str, text: str) -> Path:
        return self._guard(filename, lambda p: atomic_write(p, text))

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics as one line, flushed to the OS before returning."""
        def append(p: Path) -> None:
            with open(p, "a") as f:
                f.write(strict_json(row) + "\n")
        self._guard("metrics.jsonl", append)
        for listener in self.on_epoch:
            listener(row)

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        """metrics.jsonl as exactly ``rows`` (a resumed run's history, from its checkpoint)."""
        self.write("metrics.jsonl", "".join(strict_json(r) + "\n" for r in rows))

    def save_weights(self, filename: str, model: nn.Module) -> None:
        """A plain state dict (``load_state_dict`` takes it) that names its run in the state dict's own
        metadata (``models.weights.run_id_of``)."""
        state = model.state_dict()
        weights = OrderedDict((k, v.detach().cpu()) for k, v in state.items())
        weights._metadata = OrderedDict(getattr(state, "_metadata", {}))  # type: ignore[attr-defined]
        weights._metadata[RUN_ID_KEY] = {"run_id": self.results.get("run_id")}  # type: ignore[attr-defined]
        self.save_state(weights, filename)

    def save_state(self, state: dict[str, Any], filename: str = "last.pt") -> None:
        if not self.writes:
            return
        # Serialised in memory first: torch.save into a file on a full disk fails with a RuntimeError
        # from its zip writer ("unexpected pos"); a plain write fails with ENOSPC, which _guard reports.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self._guard(filename, lambda p: atomic_write(p, buffer.getbuffer()))

    def update(self, status: str, **fields: Any) -> dict[str, Any]:
        """Record the run's status (and any results) in results.json; returns everything recorded so far."""
        assert status in STATUSES, status
        self.results.update(fields, status=status)
        self.write("results.json", strict_json(self.results, indent=2) + "\n")
        return self.results

    def file(self, filename: str) -> Path:
        assert self.path is not None, "RunDir.create() first"
        return self.path / filename

    def _guard(self, filename: str, write):
        """Run ``write(path)``; a full disk or a lost directory is a ``RunFailed`` naming the file."""
        if not self.writes:
            return None
        path = self.file(filename)
        try:
            return write(path)
        except OSError as e:
            raise RunFailed(f"cannot write {path}: {e.strerror or e}") from None

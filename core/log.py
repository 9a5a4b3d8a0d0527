"""Everything a run or a call says goes through the ``vitlab`` logger (``log = get_logger(__name__)``).

The console shows what users have always seen: INFO lines on stdout as plain text, warnings and errors on
stderr. ``quiet()`` raises the console's level above ``SUMMARY`` (the model summary table), which is what
``--quiet`` means; a process that is not rank 0 of a several-process run is silenced by ``only_rank0``; a
``--jobs`` worker sends its lines to the run's ``train.log`` instead (``to_file``, with what was logged
before the file existed buffered and written first).
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Optional

ROOT = "vitlab"
SUMMARY = logging.INFO - 5  # the torchinfo table: on the console unless --quiet, always in summary.txt


def get_logger(name: str) -> logging.Logger:
    """The project's logger for module ``name`` (a child of ``vitlab``)."""
    return logging.getLogger(f"{ROOT}.{name}")


_muted = [False]  # set by only_rank0 in the processes of a several-process run other than rank 0


def _unmuted(record: logging.LogRecord) -> bool:
    return not _muted[0]


class _Console(logging.Handler):
    """Plain lines to the stream ``sys.stdout`` or ``sys.stderr`` is *now* (tests and tools replace them)."""

    def __init__(self, stream: str, test) -> None:
        super().__init__(SUMMARY)
        self.stream_name = stream
        self.addFilter(lambda record: test(record.levelno))
        self.addFilter(_unmuted)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = getattr(sys, self.stream_name)
            stream.write(record.getMessage() + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken console must not stop a run
            pass


_root = logging.getLogger(ROOT)
_root.setLevel(SUMMARY)
_root.propagate = False
CONSOLE = (_Console("stdout", lambda level: level < logging.WARNING),
           _Console("stderr", lambda level: level >= logging.WARNING))
for _h in CONSOLE:
    _root.addHandler(_h)


class quiet:
    """Inside, with ``on`` (``--quiet``): no model summary on the console (it is still written to summary.txt)."""

    def __init__(self, on: bool = True) -> None:
        self.on = on

    def __enter__(self) -> "quiet":
        self.before = [h.level for h in CONSOLE]
        for h in CONSOLE:
            h.setLevel(logging.INFO if self.on else SUMMARY)
        return self

    def __exit__(self, *exc) -> None:
        for h, level in zip(CONSOLE, self.before):
            h.setLevel(level)


class only_rank0:
    """Inside, only rank 0 of a several-process run logs (``with only_rank0(dist.is_main): ...``): a filter on
    every handler of the project's logger (a logger's own filters would not see its children's records)."""

    def __init__(self, is_main: bool) -> None:
        self.is_main = is_main

    def __enter__(self) -> "only_rank0":
        self.before, _muted[0] = _muted[0], _muted[0] or not self.is_main
        return self

    def __exit__(self, *exc) -> None:
        _muted[0] = self.before


class to_file:
    """Inside, this process's log goes to a file instead of the console (a ``--jobs`` or SLURM worker's
    ``train.log``). Lines logged before ``open(folder)`` are held and written first, and warnings before it
    also reach stderr (the launcher shows them); writing the log never fails a run (a full disk fails the
    run's own writes)."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.held = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
        self.held.setLevel(SUMMARY)
        self.held.addFilter(_unmuted)
        self.file: Optional[logging.FileHandler] = None

    def open(self, folder: Path, header: str = "") -> Path:
        path = Path(folder) / self.filename
        try:
            self.file = logging.FileHandler(path, encoding="utf-8")
        except OSError:
            return path
        self.file.setLevel(SUMMARY)
        self.file.addFilter(_unmuted)
        self.file.handleError = lambda record: None  # a full disk: the line is lost, the run goes on
        if header:
            self.file.handle(logging.makeLogRecord({"msg": header, "levelno": logging.INFO}))
        self.held.setTarget(self.file)
        self.held.flush()
        _root.addHandler(self.file)
        for h in (self.held, *self.console):
            _root.removeHandler(h)
        return path

    def __enter__(self) -> "to_file":
        self.console = [h for h in _root.handlers if h in CONSOLE]
        _root.removeHandler(CONSOLE[0])  # INFO lines wait for the file; warnings go to stderr until it opens
        _root.addHandler(self.held)
        return self

    def __exit__(self, *exc) -> None:
        for h in (self.held, self.file):
            if h is not None:
                _root.removeHandler(h)
                h.close()
        for h in self.console:
            if h not in _root.handlers:
                _root.addHandler(h)


class all_to_stderr:
    """Inside, every console line goes to stderr (a tool whose stdout is its result, such as a benchmark's
    table)."""

    def __enter__(self) -> "all_to_stderr":
        self.stdout = CONSOLE[0].stream_name
        CONSOLE[0].stream_name = "stderr"
        return self

    def __exit__(self, *exc) -> None:
        CONSOLE[0].stream_name = self.stdout

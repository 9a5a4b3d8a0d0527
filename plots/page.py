"""The comparison page's parts, shared by its Markdown (``plots.report``) and HTML (``plots.html``) forms, and
``write``, how every file of a comparison (and --eval's confusion matrix) is written."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from core.errors import RunFailed
from core.files import Payload, atomic_write


def write(path: Path, data: Payload) -> Path:
    """``core.files.atomic_write``; a write that fails (a full disk, a read-only folder) is one line naming
    the file (``RunFailed``). The file keeps what it held before and no temporary file is left."""
    try:
        return atomic_write(path, data)
    except OSError as e:  # ENOSPC from a write or fsync carries no file name: the message gives it
        raise RunFailed(f"{path}: cannot write ({e.strerror or e})") from None


@dataclass
class Figure:
    title: str
    caption: str  # one line: what the figure shows
    path: Path


@dataclass
class Table:
    """A section's table: column titles, which columns hold numbers (right-aligned), rows of cell texts."""

    id: str  # the HTML table's id
    head: list[str]
    numeric: list[bool]
    rows: list[list[str]]


@dataclass
class Section:
    """A heading of the index with its figures (a figure titled like its section gets no heading of its own)."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    intro: str = ""
    side_by_side: bool = False  # narrow, tall figures (one per experiment): two to a row in index.html
    table: Optional[Table] = None  # shown after the intro, before the figures

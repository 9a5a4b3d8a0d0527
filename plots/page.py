"""The comparison page's parts, shared by its Markdown (``plots.report``) and HTML (``plots.html``) forms."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Figure:
    title: str
    caption: str  # one line: what the figure shows
    path: Path


@dataclass
class Section:
    """A heading of the index with its figures (a figure titled like its section gets no heading of its own)."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    intro: str = ""
    side_by_side: bool = False  # narrow, tall figures (one per experiment): two to a row in index.html

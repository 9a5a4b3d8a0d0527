"""Rendering comparisons of finished runs from their files: ``python -m plots RUN_DIR... --out DIR`` (see
``plots.report``). Nothing here builds or runs a model; ``evaluate.compare`` measures what needs one."""
from plots.confusion import write_confusion
from plots.report import render

__all__ = ["render", "write_confusion"]

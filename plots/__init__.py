"""Comparisons of finished runs: ``python -m plots RUN_DIR... --out DIR`` (see ``plots.report``)."""
from plots.confusion import write_confusion
from plots.report import compare

__all__ = ["compare", "write_confusion"]

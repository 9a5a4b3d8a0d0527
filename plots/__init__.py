"""Comparisons of finished runs: ``python -m plots RUN_DIR... --out DIR`` (see ``plots.report``)."""
from plots.report import compare

__all__ = ["compare"]

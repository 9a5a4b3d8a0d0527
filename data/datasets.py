"""Compatibility only: what this module held is now data.specs, data.formats, data.cache, data.download,
data.catalog and data.locate."""
# compatibility for callers being moved (issue 22); removed when they import from data.<module>
from data.catalog import get_spec  # main.py / launch/start.py (run_facts): use data.catalog or `from data import`
from data.formats import MAX_IMAGE_PIXELS  # train/inference.py, now evaluate/inference.py: use data.formats
from data.locate import locate  # main.py / launch/start.py (run_facts): use data.locate

__all__ = ["MAX_IMAGE_PIXELS", "get_spec", "locate"]

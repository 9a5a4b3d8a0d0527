"""Loading a dataset: find its official files (under ``data.root``, else in the system folder), download
them when missing and allowed, decode them (or read the cache), and cap the splits.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from core.errors import UserError
from core.log import get_logger
from data.cache import cache_folder, decode_cached, default_cache_dir
from data.catalog import get_spec
from data.download import fetch
from data.problems import path_problem, warn
from data.specs import DatasetSpec, ImageData

log = get_logger(__name__)

# Where distributions install datasets: Debian's dataset-fashion-mnist package puts the four idx files in
# /usr/share/datasets/fashion-mnist. Other datasets follow the same rule, <name with - for _>, should a package
# (or an administrator) put them there. The environment variable overrides it (tests point it elsewhere).
SYSTEM_DATASETS = Path("/usr/share/datasets")
SYSTEM_DATASETS_ENV = "VITLAB_SYSTEM_DATASETS"


def system_dir(name: str) -> Path:
    """Where a system-wide copy of dataset ``name`` would be: ``/usr/share/datasets/<name with - for _>``."""
    base = os.environ.get(SYSTEM_DATASETS_ENV) or SYSTEM_DATASETS
    return Path(base) / name.replace("_", "-")


def locate(spec: DatasetSpec, root: Path) -> tuple[Optional[list[Path]], Optional[Path], list[str]]:
    """The dataset's files without downloading: under ``root`` (its own layout or torchvision's, as
    ``spec.find`` knows them), else in the system folder. Returns (files or None, the folder searched that
    had them, a description of every place looked)."""
    looked = []
    for base in dict.fromkeys((root, system_dir(spec.name))):
        try:
            files = spec.find(base)
        except OSError as e:  # a name too long, a folder that cannot be read
            if base == root:
                raise UserError(f"data.root: {root}: {path_problem(e, root)}") from None
            files = None  # the system folder is only a fallback
        if files is not None:
            return files, base, looked
        looked.append(spec.expected(base))
    return None, None, looked


def load_data(d) -> ImageData:
    """The dataset a config's ``data`` section describes (``config.schema.DataConfig``)."""
    cache = None
    if d.cache:
        try:
            cache = d.cache_dir or default_cache_dir()
        except RuntimeError as e:  # no home directory for the default cache folder
            warn(f"data.cache_dir: no default cache folder ({e}); set data.cache_dir to use one; "
                 f"continuing without a cache")
    return load_dataset(d.name, d.root, download=d.download, limit_train=d.limit_train, limit_val=d.limit_val,
                        cache_dir=cache)


def load_dataset(
    name: str,
    root: str | Path,
    *,
    download: bool = False,
    limit_train: Optional[int] = None,
    limit_val: Optional[int] = None,
    cache_dir: Optional[str | Path] = None,
) -> ImageData:
    """Find (or download), decode (or read from ``cache_dir``; None = no cache) and cap a dataset.

    Looks under ``root``, then in the system folder (``system_dir``), and only then downloads into ``root``.
    Raises UserError for anything the user can fix: missing files, failed download, corrupt data.
    """
    spec = get_spec(name)
    try:
        root = Path(root).expanduser()
    except RuntimeError as e:  # ~user that does not exist
        raise UserError(f"data.root: {root}: {e}") from None
    files, found_in, looked = locate(spec, root)
    if files is not None and found_in != root:
        log.warning(f"data: {name} not in data.root {root}; using the copy in {found_in}")
    if files is None and download:
        fetch(spec, root, looked)
        files = spec.find(root)
        if files is not None:
            log.warning(f"data: {name} downloaded into {root}")
    if files is None:
        hint = "set data.download: true to fetch it, or see docs/datasets.md, 'Datasets offline'" if not download \
            else "see docs/datasets.md, 'Datasets offline'"
        raise UserError(f"data.root: {name} not found: expected {'; or '.join(looked)}; {hint}")
    train, val = decode_cached(spec, files, cache_folder(cache_dir))
    if limit_train is not None:
        train = (train[0][:limit_train], train[1][:limit_train])
    if limit_val is not None:
        val = (val[0][:limit_val], val[1][:limit_val])
    return ImageData(spec, train, val)

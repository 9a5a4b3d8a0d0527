"""The cache of decoded datasets: one ``<name>-<key>.pt`` file of uint8 tensors per dataset and source files,
so the next run starts in a fraction of a second instead of decoding again.

The cache is only a speed-up: an unreadable, corrupted or mismatched cache file is ignored (and replaced), and
a cache folder that cannot be written costs one warning line, never the run.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Optional

import torch

from core.files import TEMP_PREFIX, atomic_write
from data.problems import brief, path_problem, warn
from data.specs import DatasetSpec, Split, check_split, decode_checked

CACHE_FORMAT = 1  # bump when decoding changes, so old caches are not reused
STALE_TEMP_S = 3600  # a cache write older than this whose temporary file is still there was killed
# Temporary files of cache writes: atomic_write names them TEMP_PREFIX + the cache file's name + "." + random.
_CACHE_TEMP_RE = re.compile(rf"^{re.escape(TEMP_PREFIX)}[a-z0-9_]+-[0-9a-f]{{16}}\.pt\.")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitlab"


def cache_folder(cache_dir: Optional[str | Path]) -> Optional[Path]:
    """``cache_dir`` as a Path (None: no cache); a ~user that does not exist costs a warning and the cache."""
    if not cache_dir:
        return None
    try:
        return Path(cache_dir).expanduser()
    except RuntimeError as e:  # ~user that does not exist
        warn(f"data.cache_dir: {cache_dir}: {e}; continuing without a cache")
        return None


def cache_key(name: str, files: list[Path]) -> str:
    """16 hex digits that change with the cache format and with any source file's path, size or mtime."""
    h = hashlib.sha1(f"{name}:{CACHE_FORMAT}".encode())
    for f in files:
        st = f.stat()
        # For image folders, a folder's mtime changes when files are added or removed.
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def remove_stale_temps(cache_dir: Path) -> None:
    """Best effort: remove what killed cache writes left behind (only our own names, in case the folder is shared)."""
    cutoff = time.time() - STALE_TEMP_S
    try:
        with os.scandir(cache_dir) as entries:
            for e in entries:
                try:
                    if (_CACHE_TEMP_RE.match(e.name) and e.is_file(follow_symlinks=False)
                            and e.stat(follow_symlinks=False).st_mtime < cutoff):
                        os.unlink(e.path)
                except OSError:
                    pass
    except OSError:
        pass


def read_cache(path: Path, spec: DatasetSpec) -> tuple[Split, Split]:
    """The cached splits, checked against ``spec``; raises ValueError saying why a file is unusable."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged zip or pickle fails in arbitrary ways
        raise ValueError(f"unreadable ({brief(e, path)})") from None
    keys = ("train_x", "train_y", "val_x", "val_y")
    if not isinstance(blob, dict) or set(blob) != set(keys):
        raise ValueError(f"holds {sorted(blob) if isinstance(blob, dict) else type(blob).__name__}, expected {keys}")
    shape = (spec.in_chans, spec.image_size, spec.image_size)
    for split in ("train", "val"):
        problem = check_split(blob[f"{split}_x"], blob[f"{split}_y"], shape, spec.num_classes)
        if problem:
            raise ValueError(f"{split}: {problem}")
    return (blob["train_x"], blob["train_y"]), (blob["val_x"], blob["val_y"])


def write_cache(path: Path, train: Split, val: Split) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"train_x": train[0], "train_y": train[1], "val_x": val[0], "val_y": val[1]}
    atomic_write(path, lambda f: torch.save(blob, f))


def decode_cached(spec: DatasetSpec, files: list[Path], cache_dir: Optional[Path]) -> tuple[Split, Split]:
    """Decoded splits, from ``cache_dir`` when a valid cache file is there. The cache never stops a run: an
    unusable cache file is ignored and replaced, an unwritable folder costs one warning line."""
    if cache_dir is None:
        return decode_checked(spec, files)
    try:
        path = cache_dir / f"{spec.name}-{cache_key(spec.name, files)}.pt"
    except OSError:  # a source file vanished since it was found: decoding will say which
        return decode_checked(spec, files)
    try:
        cached = path.is_file()
    except OSError as e:  # a name too long, a folder that cannot be read: the cache is only a speed-up
        warn(f"data.cache_dir: {cache_dir}: {path_problem(e, path)}; continuing without a cache")
        return decode_checked(spec, files)
    remove_stale_temps(cache_dir)
    ignored = None
    if cached:
        try:
            return read_cache(path, spec)
        except ValueError as e:
            ignored = f"ignored the decoded-dataset cache {path}: {e}"
    train, val = decode_checked(spec, files)
    try:
        write_cache(path, train, val)
        if ignored:
            warn(f"data.cache_dir: {ignored}; decoded the dataset again and replaced it")
    except (OSError, RuntimeError) as e:  # torch.save reports some write errors as RuntimeError
        reason = "it is a file, not a folder" if cache_dir.is_file() else brief(e)
        what = f"{ignored}, and cannot replace it" if ignored else f"cannot write the decoded-dataset cache {path}"
        warn(f"data.cache_dir: {what} ({reason}); continuing without it (the next run decodes again)")
    return train, val

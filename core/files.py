"""One atomic write for every file the project writes whole (configs, results, checkpoints, caches, reports).

The data goes to a uniquely named temporary file in the target's folder (so two processes writing the
same target never share a temporary), is flushed and fsynced, then renamed over the target, and the
folder is fsynced so the rename survives a power cut. A crash at any moment leaves either the old file
or the new one, never a half-written one; a failed write removes its temporary file.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

Payload = Union[bytes, str, Callable[[BinaryIO], None]]

TEMP_PREFIX = ".tmp-"  # temporary files start with this, so readers can skip them


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; a written file gets the mode open() would have given it (0666 less the umask).
FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | Path, data: Payload) -> Path:
    """Write ``data`` (bytes, text, or a function that writes to a binary file) to ``path`` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)  # bytes or a memoryview
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def strict_json(obj, **kwargs) -> str:
    """JSON that every parser reads: a non-finite float (NaN, inf) becomes null instead of bare ``NaN``."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False, **kwargs)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (best effort); returns what went.

    Call it only where no other process is writing (a run directory its one owner reopens)."""
    removed = []
    try:
        entries = list(Path(folder).glob(f"{TEMP_PREFIX}*"))
    except OSError:
        return removed
    for p in entries:
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed

"""How data problems are said: one line each, naming the file and what to do about it.

Dataset files are untrusted input: a corrupted byte, a truncated download or a header claiming 2**31 images
is a one-line ``UserError`` (``corrupt``), never a traceback. A problem that costs speed, not the run (an
unusable cache) is one ``warn`` line on stderr.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from core.errors import UserError
from core.log import get_logger

log = get_logger(__name__)

REFETCH = "delete it and run again with data.download: true to fetch a fresh copy"


def corrupt(path: Path, problem: str) -> UserError:
    """The error for a damaged dataset file: its path, the problem, and how to get a fresh copy."""
    return UserError(f"{path}: {problem}; {REFETCH}")


def brief(e: BaseException, path: Optional[Path] = None) -> str:
    """An exception as a short clause for a one-line message: its type and the start of its first line."""
    text = (str(e).strip().splitlines() or [""])[0]
    if path is not None:
        text = text.replace(f"'{path}'", "it").replace(str(path), "it")
    if len(text) > 120:
        text = text[:120].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


NAME_MAX = 255  # bytes in one path component on Linux's file systems (ext4, xfs, btrfs, tmpfs)


def path_problem(e: OSError, path: Path) -> str:
    """Why ``path`` cannot be used, as a short clause: the system's reason, and for a name that is too long,
    how long its longest component is."""
    reason = e.strerror or str(e)
    if e.errno == errno.ENAMETOOLONG:
        longest = max((len(os.fsencode(part)) for part in Path(path).parts), default=0)
        if longest > NAME_MAX:
            return f"{reason} (a component of {longest} bytes; at most {NAME_MAX} are allowed)"
        return f"{reason} (the whole path is {len(os.fsencode(str(path)))} bytes)"
    return reason


def describe(value) -> str:
    """What a value read from a file is, for a message: 'uint8 array (10, 3072)', 'list', ..."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{str(value.dtype).replace('torch.', '')} array {tuple(value.shape)}"
    return type(value).__name__


def warn(message: str) -> None:
    """One line on stderr (a logged warning): something went wrong that costs speed, not the run."""
    log.warning(f"warning: {message}")

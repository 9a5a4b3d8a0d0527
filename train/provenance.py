"""Where and how a run ran, recorded in results.json: enough to rerun it and to judge its numbers."""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch

from core.machine import cpu_name
from core.procs import process_start

ROOT = Path(__file__).resolve().parents[1]


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def command_line(argv: Optional[list[str]] = None) -> str:
    return shlex.join(["python", *(sys.argv if argv is None else argv)])


def git_state(root: Path = ROOT) -> Optional[dict[str, Any]]:
    """The project's commit and whether its tracked files differ from it; None outside a git checkout."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


# The other packages that can change what a run computes or records (requirements.txt).
PACKAGES = ("numpy", "pyyaml", "torchinfo", "timm", "tensorboard", "matplotlib")


def versions() -> dict[str, Any]:
    """What this run used: Python, torch and its CUDA/cuDNN, and the installed versions of ``PACKAGES`` (None
    for one that is not installed)."""
    return dict(_versions())


@functools.lru_cache(maxsize=None)  # what is installed does not change while a process runs (a sweep: many runs)
def _versions() -> dict[str, Any]:
    import torchvision

    out = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
        else None,
    }
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(device: torch.device, command: Optional[str] = None) -> dict[str, Any]:
    return {
        "command": command or command_line(),
        "cwd": os.getcwd(),
        "git": git_state(),
        "versions": versions(),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started": process_start(os.getpid()),  # with the pid, names this process (core/procs.py)
    }

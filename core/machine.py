"""Facts about this machine, read once."""
from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13"): /proc/cpuinfo on Linux, else what ``platform`` knows (often
    empty or just the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

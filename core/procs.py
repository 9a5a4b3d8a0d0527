"""Whether the process that wrote a status is still there: how a killed run is told from a live one.

A process is named by its pid **and** its start time (``process_start``): a pid the kernel has given to another
process since is not mistaken for the writer."""
from __future__ import annotations

import os
import socket
from typing import Any, Optional


def process_start(pid: int) -> Optional[int]:
    """When ``pid`` started, in clock ticks since boot (``/proc/PID/stat``, field 22), or None where that
    cannot be read (no such process, no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': fields after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


def process_alive(host: Any, pid: Any, started: Any = None) -> Optional[bool]:
    """True or False for a process on this host; None when it cannot be told (another host, no pid).
    ``started``: its recorded ``process_start``, when known; a live pid that started at another time is
    another process that reuses the number."""
    if host != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return None
    if pid == os.getpid():  # this process asks, so the writer is gone (a restarted container reuses pids)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    if isinstance(started, int):
        now = process_start(pid)
        if now is not None and now != started:
            return False
    return True

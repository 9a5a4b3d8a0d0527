"""Whether the process that wrote a status is still there: how a killed run is told from a live one."""
from __future__ import annotations

import os
import socket
from typing import Any, Optional


def process_alive(host: Any, pid: Any) -> Optional[bool]:
    """True or False for a process on this host; None when it cannot be told (another host, no pid)."""
    if host != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return None
    if pid == os.getpid():  # this process asks, so the writer is gone (a restarted container reuses pids)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True

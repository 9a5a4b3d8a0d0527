"""One writer per directory: a run directory or a comparison directory is held by an OS lock on its ``.lock`` file
for as long as a process writes there.

The lock is ``flock(LOCK_EX)``: the kernel releases it when the holder's last file descriptor closes, so a
holder killed by SIGKILL, the OOM killer or a power cut never leaves a stale lock behind, and no pid is
ever trusted to say whether a writer is still there. The holder writes who it is (pid, the process's start
time, host, command) into the file, so a second writer is told in one line whom it is waiting for.

Within one process the lock is re-entrant (a multi-run call holds its comparison directory and then writes its
comparison there). On a shared file system (NFS, Lustre) ``flock`` excludes other clients only where the file
system supports it: Linux maps ``flock`` to NFSv4 byte-range locks, which do; NFSv3 without lockd, or a
Lustre mount without ``-o flock``, lock per client only (docs/runs.md, "One writer per directory").
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

from core.errors import UserError
from core.procs import process_alive, process_start

LOCK_FILE = ".lock"

_held: dict[str, list] = {}  # realpath -> [fd, count]: this process's locks


class Busy(UserError):
    """Another process holds the directory."""


def holder_text(info: dict[str, Any]) -> str:
    """``pid 123 on host, since 2026-12-03 22:41:07`` from a lock file's content (whatever of it there is)."""
    parts = [f"pid {info['pid']}" if info.get("pid") else "another process"]
    if info.get("host"):
        parts.append(f"on {info['host']}")
    if info.get("since"):
        parts.append(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['since']))}")
    return " ".join(parts)


class DirLock:
    """The lock of one directory; ``acquire`` (or ``with``) takes it without waiting, ``release`` lets it go."""

    def __init__(self, folder: str | Path, what: str = "directory"):
        self.folder, self.what = Path(folder), what
        self.key: Optional[str] = None

    def acquire(self, tries: int = 5) -> "DirLock":
        """Take the lock, or raise ``Busy`` naming the holder. A few short retries cover another process that
        only looks (``holder``) at the same moment."""
        if self.key is not None:
            return self
        key = os.path.realpath(self.folder)
        if key in _held:
            _held[key][1] += 1
            self.key = key
            return self
        path = self.folder / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise UserError(f"{self.folder}: cannot write there ({e.strerror}); a {self.what} needs a writable "
                            f"directory") from None
        for attempt in range(tries):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or attempt == tries - 1:
                    info = _read(fd)
                    os.close(fd)
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise UserError(f"{self.folder}: cannot lock {path} ({e.strerror})") from None
                    raise Busy(f"{self.folder}: in use by {holder_text(info)} "
                               f"({' '.join(info.get('argv') or []) or 'command unknown'}); one process writes a "
                               f"{self.what} at a time: wait for it or stop it first") from None
                time.sleep(0.05 * (attempt + 1))
        me = {"pid": os.getpid(), "started": process_start(os.getpid()), "host": socket.gethostname(),
              "since": time.time(), "argv": sys.argv[:8]}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError:
            pass  # who holds it is only a courtesy to the next writer; the lock itself is held
        _held[key] = [fd, 1]
        self.key = key
        return self

    def release(self) -> None:
        if self.key is None:
            return
        entry = _held[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.key]
            os.close(entry[0])  # releases the flock; the file stays (removing it would race a waiting writer)
        self.key = None

    @property
    def held(self) -> bool:
        return self.key is not None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(folder: str | Path) -> Optional[dict[str, Any]]:
    """Who holds ``folder``'s lock (its lock file's content, ``{}`` when unreadable), or None when nobody does
    (or it has no lock file). Held by this process counts as held."""
    folder = Path(folder)
    if os.path.realpath(folder) in _held:
        return {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _read(fd)
            return None
        return None
    finally:
        os.close(fd)  # also drops the shared lock


def _read(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def writer_alive(folder: str | Path, results: dict[str, Any]) -> Optional[bool]:
    """Whether the process that writes the run in ``folder`` (its results.json: ``results``) still runs: True while
    a process holds the folder's lock; else False for one killed without a word (SIGKILL, a power cut), None
    when that cannot be told from here (another host, whose locks this file system may not share)."""
    if holder(folder) is not None:
        return True
    if results.get("status") != "running":
        return False
    if (Path(folder) / LOCK_FILE).exists() and results.get("host") == socket.gethostname():
        return False  # a writer on this host holds the lock as long as it lives
    return process_alive(results.get("host"), results.get("pid"), results.get("pid_started"))
